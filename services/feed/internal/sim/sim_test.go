package sim_test

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/feed/internal/sim"
	"vigil.dev/services/feed/internal/source"
)

// recorder is a source.Sink that keeps trades and the last clock.
type recorder struct {
	mu     sync.Mutex
	trades []source.Trade
	books  []source.BookUpdate
	clock  time.Time
}

func (r *recorder) Trade(t source.Trade) { r.mu.Lock(); r.trades = append(r.trades, t); r.mu.Unlock() }
func (r *recorder) Candle(source.Bar)    {}
func (r *recorder) Book(u source.BookUpdate) {
	r.mu.Lock()
	r.books = append(r.books, u)
	r.mu.Unlock()
}
func (r *recorder) Clock(now time.Time) { r.mu.Lock(); r.clock = now; r.mu.Unlock() }
func (r *recorder) Gap(source.Gap)      {}
func (r *recorder) CandleThenClock(_ source.Bar, now time.Time) {
	r.Clock(now)
}
func (r *recorder) Malformed(error) {}

func (r *recorder) snapshot() ([]source.Trade, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]source.Trade(nil), r.trades...), r.clock
}

// aggregate builds bars of tf from trades in order, as the feed's engine does.
func aggregate(trades []source.Trade, tf contract.Timeframe) []source.Bar {
	var out []source.Bar
	for _, t := range trades {
		start := tf.BarStart(t.Time)
		if n := len(out); n > 0 && out[n-1].Start.Equal(start) {
			b := &out[n-1]
			b.High = max(b.High, t.Price)
			b.Low = min(b.Low, t.Price)
			b.Close = t.Price
			b.Volume += t.Size
			continue
		}
		out = append(out, source.Bar{Product: t.Product, Timeframe: tf, Start: start, Open: t.Price, High: t.Price, Low: t.Price, Close: t.Price, Volume: t.Size})
	}
	return out
}

func TestHistoryEqualsWhatTheLiveSimulatorEmitted(t *testing.T) {
	rec := &recorder{}
	s, err := sim.New(sim.Config{Seed: 3, Speed: 3600, Tick: 5 * time.Millisecond}, rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Subscribe(source.ChannelBars, "ETH-USD"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	testenv.WaitFor(t, 30*time.Second, "the simulator to emit 40 sim minutes of trades", func() bool {
		trades, _ := rec.snapshot()
		return len(trades) > 0 && trades[len(trades)-1].Time.Sub(trades[0].Time) > 40*time.Minute
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	trades, clock := rec.snapshot()
	for i := 1; i < len(trades); i++ {
		if !trades[i].Time.After(trades[i-1].Time) {
			t.Fatalf("trade %d at %v is not after trade %d at %v", i, trades[i].Time, i-1, trades[i-1].Time)
		}
	}
	for _, tf := range []contract.Timeframe{contract.TF1m, contract.TF5m, contract.TF15m} {
		t.Run(string(tf), func(t *testing.T) {
			live := aggregate(trades, tf)
			// Compare the bars whose whole span the live trades cover.
			first := tf.BarStart(trades[0].Time).Add(tf.Duration())
			want, err := s.History(context.Background(), "ETH-USD", tf, first, tf.BarStart(clock))
			if err != nil {
				t.Fatal(err)
			}
			if len(want) == 0 {
				t.Fatal("no complete bar to compare")
			}
			byStart := map[time.Time]source.Bar{}
			for _, b := range live {
				byStart[b.Start] = b
			}
			for _, w := range want {
				if err := w.Validate(); err != nil {
					t.Errorf("history bar: %v", err)
				}
				if got := byStart[w.Start]; got != w {
					t.Errorf("bar %v: live %+v, history %+v", w.Start, got, w)
				}
			}
		})
	}
}

func TestHistoryOfAPartialBarStopsAtTo(t *testing.T) {
	s, err := sim.New(sim.Config{Seed: 3, Speed: 60}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	to := contract.TF1h.BarStart(s.Now()).Add(-37*time.Minute - 12*time.Second)
	part, err := s.History(context.Background(), "BTC-USD", contract.TF1h, to.Add(-time.Minute), to)
	if err != nil {
		t.Fatal(err)
	}
	mins, err := s.History(context.Background(), "BTC-USD", contract.TF1m, contract.TF1h.BarStart(to), to)
	if err != nil {
		t.Fatal(err)
	}
	if len(part) != 1 || len(mins) != 23 {
		t.Fatalf("%d hour bars and %d minute bars, want 1 and 23 (22 whole minutes and a partial one)", len(part), len(mins))
	}
	h := source.Aggregate("BTC-USD", contract.TF1h, mins)[0]
	if h.Open != part[0].Open || h.High != part[0].High || h.Low != part[0].Low || h.Close != part[0].Close || math.Abs(h.Volume-part[0].Volume) > 1e-9 {
		t.Errorf("partial hour %+v, its minutes give %+v", part[0], h)
	}
}

func TestSimTimeRunsAheadOfTheWallClock(t *testing.T) {
	wall := time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)
	now := wall
	s, err := sim.New(sim.Config{Speed: 60, Wall: func() time.Time { return now }}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	midnight := time.Date(2026, 3, 4, 0, 0, 0, 0, time.UTC)
	if got, want := s.Now(), midnight.Add(600*time.Hour); !got.Equal(want) {
		t.Errorf("sim time at 10:00 with the midnight anchor = %v, want %v", got, want)
	}
	before := s.Now()
	now = now.Add(time.Second)
	if got := s.Now().Sub(before); got != time.Minute {
		t.Errorf("one wall second moved sim time by %v, want one minute", got)
	}
	if s.Now().Before(now) {
		t.Error("sim time is behind the wall clock")
	}
	pinned, err := sim.New(sim.Config{Speed: 60, Anchor: wall, Wall: func() time.Time { return wall }}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	if !pinned.Now().Equal(wall) {
		t.Errorf("at the anchor sim time is %v, want the wall time %v", pinned.Now(), wall)
	}
}

func TestNewChecksTheSpeed(t *testing.T) {
	for _, tc := range []struct {
		speed float64
		ok    bool
	}{{0, true}, {1, true}, {60, true}, {sim.MaxSpeed, true}, {0.5, false}, {sim.MaxSpeed + 1, false}, {math.NaN(), false}} {
		_, err := sim.New(sim.Config{Speed: tc.speed}, &recorder{})
		if (err == nil) != tc.ok {
			t.Errorf("speed %v: err %v, want ok %v", tc.speed, err, tc.ok)
		}
	}
}

func TestSameSeedSameMarket(t *testing.T) {
	anchor := time.Now().UTC().Truncate(time.Hour)
	a, _ := sim.New(sim.Config{Seed: 9, Anchor: anchor}, &recorder{})
	b, _ := sim.New(sim.Config{Seed: 9, Anchor: anchor}, &recorder{})
	c, _ := sim.New(sim.Config{Seed: 10, Anchor: anchor}, &recorder{})
	to := contract.TF1d.BarStart(a.Now())
	from := to.Add(-10 * 24 * time.Hour)
	ha, _ := a.History(context.Background(), "SOL-USD", contract.TF4h, from, to)
	hb, _ := b.History(context.Background(), "SOL-USD", contract.TF4h, from, to)
	hc, _ := c.History(context.Background(), "SOL-USD", contract.TF4h, from, to)
	if len(ha) != 60 || len(hb) != 60 {
		t.Fatalf("%d and %d 4h bars over 10 days, want 60", len(ha), len(hb))
	}
	for i := range ha {
		if ha[i] != hb[i] {
			t.Fatalf("bar %d differs between two simulators with the same seed", i)
		}
		if err := ha[i].Validate(); err != nil {
			t.Fatal(err)
		}
	}
	if ha[0] == hc[0] {
		t.Error("a different seed gave the same market")
	}
}

func TestWallClockReplaysThePastThenFollowsTheWallClock(t *testing.T) {
	start := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	now := start
	s, err := sim.New(sim.Config{Clock: sim.ClockWall, Speed: 61, Replay: 15 * time.Minute, Wall: func() time.Time { return now }}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.Now(), start.Add(-15*time.Minute); !got.Equal(want) {
		t.Errorf("at the start sim time is %v, want the replay's start %v", got, want)
	}
	now = start.Add(time.Second)
	if got, want := s.Now(), start.Add(-14*time.Minute+time.Second); !got.Equal(want) {
		t.Errorf("one wall second into the replay sim time is %v, want %v (61 sim seconds later)", got, want)
	}
	// 15 minutes at 61x meet the wall clock after 15 wall seconds.
	if got, want := s.CaughtUp(), start.Add(15*time.Second); !got.Equal(want) {
		t.Errorf("caught up at %v, want %v", got, want)
	}
	for _, w := range []time.Duration{15 * time.Second, 16 * time.Second, time.Hour, 30 * 24 * time.Hour} {
		now = start.Add(w)
		if got := s.Now(); !got.Equal(now) {
			t.Errorf("%v after the start sim time is %v, want the wall time %v", w, got, now)
		}
	}
	// Never in the future, at any moment of the replay.
	for w := time.Duration(0); w < 20*time.Second; w += 100 * time.Millisecond {
		now = start.Add(w)
		if s.Now().After(now) {
			t.Fatalf("%v after the start sim time %v is ahead of the wall clock %v", w, s.Now(), now)
		}
	}
}

func TestWallClockHistoryIsTheSameMarket(t *testing.T) {
	// History is a function of sim time alone: a wall-clock simulator and
	// one running ahead agree on every bar both have seen.
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	wall := func() time.Time { return now }
	a, err := sim.New(sim.Config{Seed: 5, Clock: sim.ClockWall, Wall: wall}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := sim.New(sim.Config{Seed: 5, Wall: wall}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	from, to := now.Add(-48*time.Hour), now.Add(-time.Hour)
	ha, _ := a.History(t.Context(), "BTC-USD", contract.TF1h, from, to)
	hb, _ := b.History(t.Context(), "BTC-USD", contract.TF1h, from, to)
	if len(ha) != 47 || len(hb) != 47 {
		t.Fatalf("%d and %d 1h bars over 47 hours, want 47", len(ha), len(hb))
	}
	for i := range ha {
		if ha[i] != hb[i] {
			t.Fatalf("bar %d differs: %+v and %+v", i, ha[i], hb[i])
		}
	}
	// The newest bar of the wall-clock simulator is never in the future.
	h, _ := a.History(t.Context(), "BTC-USD", contract.TF1m, now.Add(-time.Hour), now.Add(time.Hour))
	if last := h[len(h)-1]; last.Start.After(a.Now()) {
		t.Errorf("newest 1m bar starts at %v, after the sim clock %v", last.Start, a.Now())
	}
}

func TestNewChecksTheClock(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  sim.Config
		ok   bool
	}{
		{"default", sim.Config{}, true},
		{"ahead", sim.Config{Clock: sim.ClockAhead}, true},
		{"wall", sim.Config{Clock: sim.ClockWall}, true},
		{"wall with replay", sim.Config{Clock: sim.ClockWall, Replay: time.Hour}, true},
		{"unknown clock", sim.Config{Clock: "sundial"}, false},
		{"negative replay", sim.Config{Clock: sim.ClockWall, Replay: -time.Minute}, false},
		{"wall at speed 1 never catches up", sim.Config{Clock: sim.ClockWall, Speed: 1}, false},
	} {
		_, err := sim.New(tc.cfg, &recorder{})
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok %v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, sim.ErrInvalidConfig) {
			t.Errorf("%s: err %v does not wrap ErrInvalidConfig", tc.name, err)
		}
	}
}
