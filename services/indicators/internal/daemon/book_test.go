package daemon_test

import (
	"encoding/json"
	"fmt"
	"math"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// TestOrderBook publishes level2 snapshots like the feed in the
// scalper-orderbook mode and checks ob_imbalance, ob_spread and ob_depth
// of the 1m bars: in-progress per snapshot, closed by the next minute's
// first snapshot or, without one, by the clock.
func TestOrderBook(t *testing.T) {
	h := newHarness(t)
	h.startInstance("solo")
	h.waitMembers(1)
	const depthBps = 25
	st := contract.DesiredState{User: "ob", UserID: 31, ExchangeID: 5, Mode: contract.ModeScalperOrderbook,
		Symbols: []string{"BTC-USD", "ETH-USD"}, Settings: contract.Settings{Indicators: contract.IndicatorParams{DepthBps: depthBps}}}
	h.putState(st)
	testenv.Eventually(t, 10*time.Second, func() error { return statusHasUsers(h.statuses(1)[0], "ob") })
	btc := contract.SeriesID{User: "ob", UserID: 31, ExchangeID: 5, Symbol: "BTC-USD", Timeframe: contract.TF1m}
	eth := btc
	eth.Symbol = "ETH-USD"

	publish := func(symbol string, at time.Time, bids, asks []contract.BookLevel) {
		t.Helper()
		data, err := json.Marshal(contract.BookSnapshot{User: "ob", ExchangeID: 5, Symbol: symbol, Time: at, Bids: bids, Asks: asks})
		if err != nil {
			t.Fatal(err)
		}
		if err := h.nc.Publish(contract.BookSubject("ob", 5, symbol), data); err != nil {
			t.Fatal(err)
		}
	}
	// want computes the metrics of a book by their definitions.
	want := func(bids, asks []contract.BookLevel) map[string]contract.Fields {
		mid := (bids[0].Price() + asks[0].Price()) / 2
		var bid, ask float64
		for _, l := range bids {
			if l.Price() >= mid*(1-depthBps/10_000.0) {
				bid += l.Quantity()
			}
		}
		for _, l := range asks {
			if l.Price() <= mid*(1+depthBps/10_000.0) {
				ask += l.Quantity()
			}
		}
		return map[string]contract.Fields{
			"ob_imbalance": {"value": (bid - ask) / (bid + ask)},
			"ob_spread":    {"value": (asks[0].Price() - bids[0].Price()) / mid * 10_000},
			"ob_depth":     {"bid": bid, "ask": ask},
		}
	}
	check := func(u received, bids, asks []contract.BookLevel) {
		t.Helper()
		for name, f := range want(bids, asks) {
			if d := diff(u.Values[name], f); d > 1e-12 {
				t.Fatalf("%s at %d: %v, want %v", name, u.Start, u.Values[name], f)
			}
		}
		if len(u.Warming) != 0 || math.Abs(u.Close-(bids[0].Price()+asks[0].Price())/2) > 1e-9 {
			t.Fatalf("update %+v", u.IndicatorUpdate)
		}
	}

	// A minute ahead of the clock, so only snapshots close it.
	minute := time.Now().UTC().Truncate(time.Minute).Add(10 * time.Minute)
	bids1 := []contract.BookLevel{{100, 1}, {99.9, 2}, {99, 5}}
	asks1 := []contract.BookLevel{{100.1, 1.5}, {100.2, 1}, {101, 4}}
	bids2 := []contract.BookLevel{{100, 3}, {99.8, 2}}
	asks2 := []contract.BookLevel{{100.05, 0.5}, {100.3, 1}}
	publish("BTC-USD", minute.Add(5*time.Second), bids1, asks1)
	first := h.waitUpdate(btc, minute.Unix(), false)
	check(first, bids1, asks1)
	publish("BTC-USD", minute.Add(20*time.Second), bids2, asks2)
	testenv.Eventually(t, 10*time.Second, func() error {
		if n := len(h.received(func(r received) bool { return r.SeriesID == btc && !r.Closed })); n != 2 {
			return fmt.Errorf("%d in-progress updates, want 2", n)
		}
		return nil
	})
	publish("BTC-USD", minute.Add(10*time.Second), bids1, asks1) // older than the newest: ignored
	publish("BTC-USD", minute.Add(65*time.Second), bids1, asks1)
	closed := h.waitUpdate(btc, minute.Unix(), true)
	check(closed, bids2, asks2)
	next := h.waitUpdate(btc, minute.Add(time.Minute).Unix(), false)
	check(next, bids1, asks1)
	if rs := h.received(func(r received) bool { return r.SeriesID == btc && r.Start == minute.Unix() }); len(rs) != 3 {
		t.Fatalf("minute %d: %d updates, want 2 in progress and 1 closed", minute.Unix(), len(rs))
	}
	points := h.stored(btc, "ob_depth")
	if p := points[minute.Unix()]; !p.Closed || p.Version != closed.Version || diff(p.Fields, want(bids2, asks2)["ob_depth"]) > 1e-12 {
		t.Fatalf("stored ob_depth of the closed minute: %+v", p)
	}
	if p := points[minute.Add(time.Minute).Unix()]; p.Closed || diff(p.Fields, want(bids1, asks1)["ob_depth"]) > 1e-12 {
		t.Fatalf("stored ob_depth of the open minute: %+v", p)
	}

	// A minute in the past without a later snapshot is closed by the clock.
	past := time.Now().UTC().Truncate(time.Minute).Add(-2 * time.Minute)
	publish("ETH-USD", past.Add(30*time.Second), bids2, asks2)
	check(h.waitUpdate(eth, past.Unix(), true), bids2, asks2)

	// A side without levels gives no values.
	publish("ETH-USD", time.Now().UTC(), bids1, nil)
	publish("BTC-USD", minute.Add(70*time.Second), bids2, asks2)
	h.waitUpdate(btc, minute.Add(time.Minute).Unix(), false)
	testenv.Eventually(t, 10*time.Second, func() error {
		if rs := h.received(func(r received) bool { return r.SeriesID == btc && r.Start == minute.Add(time.Minute).Unix() }); len(rs) != 2 {
			return fmt.Errorf("%d updates of the open minute, want 2", len(rs))
		}
		return nil
	})
	if rs := h.received(func(r received) bool { return r.SeriesID == eth && r.Start > past.Unix() }); len(rs) != 0 {
		t.Fatalf("one-sided book produced %+v", rs)
	}
}
