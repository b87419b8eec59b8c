package daemon_test

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/feed/internal/sim"
)

// simEnv runs the simulator at 600× (a 1m bar every 100 ms of wall time)
// with a pinned anchor, so a reference simulator can rebuild its history.
func simEnv(anchor time.Time) map[string]string {
	return map[string]string{
		"VIGIL_FEED_SOURCE":         "sim",
		"VIGIL_SIM_SPEED":           "600",
		"VIGIL_SIM_SEED":            "7",
		"VIGIL_SIM_ANCHOR":          anchor.Format(time.RFC3339),
		"VIGIL_SIM_TICK":            "20ms",
		"VIGIL_FEED_FLUSH_INTERVAL": "50ms",
		"VIGIL_FEED_GAP_FILL_BARS":  "50",
	}
}

func TestSimCandlesMatchTheSimulatorsHistory(t *testing.T) {
	s := newStack(t, 0)
	anchor := time.Now().UTC().Truncate(time.Hour)
	log := s.recordCandles(t)
	books := map[string][]contract.BookSnapshot{}
	var booksMu sync.Mutex
	bookSub, err := s.nc.Subscribe(contract.BookSubjects, func(m *nats.Msg) {
		var b contract.BookSnapshot
		if err := json.Unmarshal(m.Data, &b); err != nil {
			t.Errorf("book %s: %v", m.Data, err)
			return
		}
		booksMu.Lock()
		books[m.Subject] = append(books[m.Subject], b)
		booksMu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer bookSub.Unsubscribe()

	startFeed(t, s, simEnv(anchor))
	alice := contract.DesiredState{User: "alice", UserID: 1, ExchangeID: 7, Mode: contract.ModeScalperOrderbook, Symbols: []string{"BTC-USD", "ETH-USD"}}
	bob := contract.DesiredState{User: "bob", UserID: 2, ExchangeID: 7, Mode: contract.ModePositionMonitor, Symbols: []string{"BTC-USD"}}
	s.putState(t, alice)
	s.putState(t, bob)

	aliceBTC := contract.SeriesID{User: "alice", UserID: 1, ExchangeID: 7, Symbol: "BTC-USD"}
	// 15m bars close every 1.5 s of wall time: wait for three live ones.
	testenv.WaitFor(t, 20*time.Second, "three live closed 15m bars", func() bool {
		n := 0
		for _, c := range log.maxVersions(with(aliceBTC, contract.TF15m)) {
			if c.Closed && c.Source == "sim" {
				n++
			}
		}
		return n >= 3
	})

	st := s.statuses(t, 1)
	for _, v := range st {
		if v.Products["BTC-USD"].Subscribers != 2 || v.Products["ETH-USD"].Subscribers != 1 {
			t.Errorf("products = %+v, want BTC-USD shared by 2 subscribers and ETH-USD by 1", v.Products)
		}
		if !v.Products["BTC-USD"].Book || !v.Users["alice"].Book || v.Users["bob"].Book {
			t.Errorf("book flags: product %+v, alice %+v, bob %+v", v.Products["BTC-USD"], v.Users["alice"], v.Users["bob"])
		}
	}

	ref, err := sim.New(sim.Config{Seed: 7, Speed: 600, Anchor: anchor}, nil)
	if err != nil {
		t.Fatal(err)
	}
	type check struct {
		user   contract.DesiredState
		symbol string
		tf     contract.Timeframe
	}
	for _, c := range []check{
		{alice, "BTC-USD", contract.TF1m}, {alice, "BTC-USD", contract.TF5m}, {alice, "BTC-USD", contract.TF15m},
		{alice, "BTC-USD", contract.TF1h}, {alice, "ETH-USD", contract.TF1m}, {bob, "BTC-USD", contract.TF1m}, {bob, "BTC-USD", contract.TF5m},
	} {
		t.Run(c.user.User+"/"+c.symbol+"/"+string(c.tf), func(t *testing.T) {
			id := contract.SeriesID{User: c.user.User, UserID: c.user.UserID, ExchangeID: c.user.ExchangeID, Symbol: c.symbol, Timeframe: c.tf}
			published := log.maxVersions(id) // before the read: all of it is in Redis
			stored := s.series(t, id)
			if len(stored) < 2 {
				t.Fatalf("only %d bars stored", len(stored))
			}
			if gap := contiguous(stored); gap != 0 {
				t.Fatalf("bar %d is missing", gap)
			}
			want, err := ref.History(context.Background(), c.symbol, c.tf, stored[0].StartTime(), ref.Now())
			if err != nil {
				t.Fatal(err)
			}
			byStart := map[int64]contract.Candle{}
			for _, b := range want {
				byStart[b.Start.Unix()] = contract.Candle{Open: b.Open, High: b.High, Low: b.Low, Close: b.Close, Volume: b.Volume}
			}
			compared := 0
			for _, got := range stored {
				if !got.Closed {
					continue
				}
				w, ok := byStart[got.Start]
				if !ok {
					t.Fatalf("bar %d is not in the simulator's history", got.Start)
				}
				if got.Open != w.Open || got.High != w.High || got.Low != w.Low || got.Close != w.Close || !sameVolume(got.Volume, w.Volume) {
					t.Errorf("bar %d (%s): stored %v/%v/%v/%v/%v, history %v/%v/%v/%v/%v", got.Start, got.Source,
						got.Open, got.High, got.Low, got.Close, got.Volume, w.Open, w.High, w.Low, w.Close, w.Volume)
				}
				compared++
			}
			if compared == 0 {
				t.Fatal("no closed bar to compare")
			}
			checkNewestKept(t, stored, published)
			// Sim time never trails the wall clock: the newest bar looks fresh.
			if last := stored[len(stored)-1]; time.Since(last.StartTime()) > 2*c.tf.Duration() {
				t.Errorf("newest bar starts at %v, more than two bars before the wall clock", last.StartTime())
			}
		})
	}

	booksMu.Lock()
	defer booksMu.Unlock()
	for subject := range books {
		if subject != contract.BookSubject("alice", 7, "BTC-USD") && subject != contract.BookSubject("alice", 7, "ETH-USD") {
			t.Errorf("book published on %s; only alice is in scalper-orderbook mode", subject)
		}
	}
	got := books[contract.BookSubject("alice", 7, "BTC-USD")]
	if len(got) < 2 {
		t.Fatalf("%d BTC-USD books for alice, want several", len(got))
	}
	for i, b := range got {
		if err := b.Validate(); err != nil {
			t.Errorf("book %d: %v", i, err)
		}
		if len(b.Bids) != 50 || len(b.Asks) != 50 {
			t.Errorf("book %d has %d bids and %d asks, want 50 each", i, len(b.Bids), len(b.Asks))
		}
		if !slices.IsSortedFunc(b.Bids, func(x, y contract.BookLevel) int { return -cmpFloat(x.Price(), y.Price()) }) ||
			!slices.IsSortedFunc(b.Asks, func(x, y contract.BookLevel) int { return cmpFloat(x.Price(), y.Price()) }) ||
			b.Bids[0].Price() >= b.Asks[0].Price() {
			t.Errorf("book %d is not best-first or is crossed: bid %v ask %v", i, b.Bids[0], b.Asks[0])
		}
		if i > 0 && b.Time.Sub(got[i-1].Time) < 240*time.Millisecond {
			t.Errorf("books %d and %d are %v apart, want at least 250ms", i-1, i, b.Time.Sub(got[i-1].Time))
		}
	}
}

func with(id contract.SeriesID, tf contract.Timeframe) contract.SeriesID {
	id.Timeframe = tf
	return id
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// sameVolume reports whether two volumes agree up to float summation order.
func sameVolume(a, b float64) bool {
	d := a - b
	if d < 0 {
		d = -d
	}
	return d <= 1e-9*(1+a)
}
