package daemon_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/indicators/internal/catalog"
	"vigil.dev/services/indicators/internal/ta"
)

// TestResumeIsExact pauses a user, stores newer bars and a correction of
// an older bar while they are paused, resumes them and checks that every
// stored value of the series, and the update of the next bar, are exactly
// those of a series rebuilt from scratch from the candles in Redis. The
// candles reach the instance while the user is paused (the kept series is
// dropped and rebuilt on resume) or only after the resume (the kept series
// catches up with the newer bars from Redis at resume, and the correction
// arrives later like any candle).
func TestResumeIsExact(t *testing.T) {
	tests := []struct {
		name string
		// delivered: the candles stored while paused are also published
		// while paused; otherwise only after the resume.
		delivered bool
	}{
		{"candles delivered while paused", true},
		{"candles delivered after the resume", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.startInstance("one")
			h.waitMembers(1)
			id := contract.SeriesID{User: "rs", UserID: 31, ExchangeID: 1, Symbol: "BTC-USD", Timeframe: contract.TF1h}
			// other runs all along: once its candle fed after the paused
			// user's is done, the instance's consumer has handled those.
			other := contract.SeriesID{User: "ot", UserID: 32, ExchangeID: 1, Symbol: "ETH-USD", Timeframe: contract.TF1h}
			state := h.putState(contract.DesiredState{User: id.User, UserID: id.UserID, ExchangeID: id.ExchangeID,
				Mode: contract.ModePositionMonitor, Symbols: []string{id.Symbol}})
			h.putState(contract.DesiredState{User: other.User, UserID: other.UserID, ExchangeID: other.ExchangeID,
				Mode: contract.ModePositionMonitor, Symbols: []string{other.Symbol}})
			testenv.Eventually(t, 10*time.Second, func() error {
				st := h.statuses(1)[0]
				if n := st.Users[id.User].Series + st.Users[other.User].Series; n != 6 {
					return fmt.Errorf("%d series running, want 6", n)
				}
				return nil
			})
			data, otherData := candles(t, id, 200, 1), candles(t, other, 200, 1.1)
			h.feed(data[:120]...)
			h.waitUpdate(id, data[119].Start, true)

			paused := state
			paused.Paused = true
			for _, r := range results[contract.IndicatorsSeriesResult](t, h.request(contract.VerbPause, contract.SvcRequest{User: id.User, State: &paused}, 1)) {
				if r.Series != 3 {
					t.Fatalf("pause stopped %d series, want 3", r.Series)
				}
			}
			paused = h.putState(paused)

			// While paused: twenty newer bars and a backfilled correction
			// of bar 100.
			fix := data[100]
			fix.Close *= 1.02
			fix.High = max(fix.High, fix.Close)
			fix.Version = time.Now().UnixMicro()
			fix.Source = "rest"
			data[100] = fix
			changed := append(slices.Clone(data[120:140]), fix)
			if tt.delivered {
				h.feed(changed...)
				h.feed(otherData[0])
				h.waitUpdate(other, otherData[0].Start, true)
			} else if _, err := h.store.WriteCandles(context.Background(), changed); err != nil {
				t.Fatal(err)
			}

			running := paused // as new as the state known
			running.Paused = false
			for _, r := range results[contract.IndicatorsSeriesResult](t, h.request(contract.VerbResume, contract.SvcRequest{User: id.User, State: &running}, 1)) {
				if r.Series != 3 {
					t.Fatalf("resume started %d series, want 3", r.Series)
				}
			}
			h.putState(running)
			// The bars stored while paused have values once resume answered.
			if _, ok := h.stored(id, "ema_20")[data[139].Start]; !ok {
				t.Fatalf("no ema_20 stored for bar 139 when resume answered")
			}
			if !tt.delivered {
				h.feed(changed...) // the feed's publishes arrive late
			}
			h.feed(data[140])
			next := h.waitUpdate(id, data[140].Start, true)

			fresh := rebuildFromRedis(h, id)
			want := fresh[len(fresh)-1]
			if want.start != data[140].Start || !maps.EqualFunc(next.Values, want.values, maps.Equal) {
				t.Fatalf("update of bar 140 after resume:\n got %v\nwant %v (bar %d)", next.Values, want.values, want.start)
			}
			testenv.Eventually(t, 10*time.Second, func() error { return sameAsStored(h, id, fresh) })
		})
	}
}

// rebuiltBar is the values of one bar of a series rebuilt from scratch.
type rebuiltBar struct {
	start  int64
	values map[string]contract.Fields
}

// rebuildFromRedis computes id's position-monitor indicators over its
// stored candles with a new ta.Series, as a rebuild from Redis does.
func rebuildFromRedis(h *harness, id contract.SeriesID) []rebuiltBar {
	h.t.Helper()
	plan, err := catalog.For(contract.ModePositionMonitor, contract.IndicatorParams{}.WithDefaults())
	if err != nil {
		h.t.Fatal(err)
	}
	stored, err := h.store.Candles(context.Background(), id, 0, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	cs := make([]ta.Candle, len(stored))
	for i, c := range stored {
		cs[i] = ta.Candle{Start: c.Start, Open: c.Open, High: c.High, Low: c.Low, Close: c.Close, Volume: c.Volume}
	}
	s, err := ta.NewSeries(plan.Candle)
	if err != nil {
		h.t.Fatal(err)
	}
	values, err := s.Rebuild(cs)
	if err != nil {
		h.t.Fatal(err)
	}
	width := len(plan.Candle)
	out := make([]rebuiltBar, len(cs))
	for i := range cs {
		out[i] = rebuiltBar{start: cs[i].Start, values: map[string]contract.Fields{}}
		for _, v := range values[i*width : (i+1)*width] {
			if f, ok := catalog.Fields(v); ok {
				out[i].values[v.Name] = f
			}
		}
	}
	return out
}

// sameAsStored reports the first bar whose stored values differ from the
// rebuilt ones (a warming value must not be stored).
func sameAsStored(h *harness, id contract.SeriesID, bars []rebuiltBar) error {
	for _, name := range positionMonitor {
		stored := h.stored(id, name)
		for i, b := range bars {
			f, warm := b.values[name]
			p, ok := stored[b.start]
			switch {
			case warm != ok:
				return fmt.Errorf("%s bar %d: stored %v, rebuilt warm %v", name, i, ok, warm)
			case ok && !maps.Equal(p.Fields, f):
				return fmt.Errorf("%s bar %d: stored %v (version %d), rebuilt %v", name, i, p.Fields, p.Version, f)
			}
		}
	}
	return nil
}
