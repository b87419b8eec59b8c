package daemon_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// positionMonitor is the indicator set of position-monitor with the
// default parameters.
var positionMonitor = []string{"ema_20", "ema_50", "rsi_14", "macd_12_26_9", "atr_14", "bb_20_2"}

// TestCandlesToIndicators feeds the whole reference data set like the feed
// does (Redis first, then VIGIL_CANDLES), with in-progress updates before
// some bars close and a corrected closed candle, and checks the values in
// Redis and on NATS against TA-Lib.
func TestCandlesToIndicators(t *testing.T) {
	h := newHarness(t)
	h.startInstance("solo")
	h.waitMembers(1)
	pm := contract.SeriesID{User: "tester", UserID: 7, ExchangeID: 3, Symbol: "BTC-USD", Timeframe: contract.TF1h}
	mv := contract.SeriesID{User: "scalper", UserID: 8, ExchangeID: 4, Symbol: "ETH-USD", Timeframe: contract.TF1m}
	pmState := h.putState(contract.DesiredState{User: pm.User, UserID: pm.UserID, ExchangeID: pm.ExchangeID, Mode: contract.ModePositionMonitor, Symbols: []string{pm.Symbol}})
	mvState := h.putState(contract.DesiredState{User: mv.User, UserID: mv.UserID, ExchangeID: mv.ExchangeID, Mode: contract.ModeScalperMACDV, Symbols: []string{mv.Symbol}})
	testenv.Eventually(t, 10*time.Second, func() error {
		return statusHasUsers(h.statuses(1)[0], pm.User, mv.User)
	})
	// Status lists a user once its state is known, while its series may
	// still be built (the users' states are applied concurrently); apply
	// answers after the builds in flight. A first bar delivered during
	// the build would wait for it and then be covered by a rebuild that
	// publishes only the newest bar.
	for _, st := range []contract.DesiredState{pmState, mvState} {
		h.request(contract.VerbApply, contract.SvcRequest{User: st.User, State: &st}, 1)
	}

	all := candles(t, pm, 5000, 1)
	macdv := candles(t, mv, 300, 0.05)
	const corrected = 1500 // this bar is corrected after the next one closed
	var inProgress []int   // bars with in-progress updates before they close
	var reordered []int    // bars whose close is published after the next bar's first update
	began := time.Now()
	for i := range all {
		switch {
		case i%89 == 30 && i+1 < len(all):
			reordered = append(reordered, i)
			inProgress = append(inProgress, i+1)
			h.feedFlush(partialOf(all[i+1]), all[i])
		case i%97 == 50 && !slices.Contains(reordered, i-1):
			inProgress = append(inProgress, i)
			h.feed(partialOf(all[i]), all[i])
		default:
			h.feed(all[i])
		}
		if i < len(macdv) {
			h.feed(macdv[i])
		}
		if i == corrected+1 {
			fixed := all[corrected]
			fixed.Close *= 1.01
			fixed.High = max(fixed.High, fixed.Close)
			fixed.Version = all[corrected+1].Version + 1_000_000 // a REST reconcile after the next close
			fixed.Source = "rest"
			all[corrected] = fixed
			h.feed(fixed)
		}
	}
	last := all[len(all)-1]
	h.waitUpdate(pm, last.Start, true)
	h.waitUpdate(mv, macdv[len(macdv)-1].Start, true)
	n := len(all) + len(macdv) + len(inProgress) + 1
	t.Logf("%d candle updates fed and computed in %s (%.0f/s, bounded by the test's synchronous feed)",
		n, time.Since(began).Round(time.Millisecond), float64(n)/time.Since(began).Seconds())

	t.Run("stored values match TA-Lib", func(t *testing.T) {
		h := h.sub(t)
		for _, name := range positionMonitor {
			worst := h.checkStored(pm, name, all)
			t.Logf("%s: %d bars, largest scaled error %.3g", name, len(all), worst)
		}
		worst := h.checkStored(mv, "macdv_12_26_9", macdv)
		t.Logf("macdv_12_26_9 (1m): %d bars, largest scaled error %.3g", len(macdv), worst)
	})

	t.Run("published values match TA-Lib", func(t *testing.T) {
		h := h.sub(t)
		for _, name := range positionMonitor {
			want := oracle(t, name, all)
			for i, c := range all {
				if i == corrected || i < len(all)-50 && i%10 != 0 {
					continue // the corrected bar is checked below; sample the rest
				}
				rs := h.received(func(r received) bool { return r.SeriesID == pm && r.Start == c.Start && r.Closed })
				if len(rs) == 0 {
					t.Fatalf("bar %d: no closed update published", i)
				}
				u := rs[len(rs)-1].IndicatorUpdate
				if want[i] == nil {
					if !slices.Contains(u.Warming, name) || u.Values[name] != nil {
						t.Fatalf("bar %d: %s should be warming: %+v", i, name, u)
					}
					continue
				}
				if d := diff(u.Values[name], want[i]); d > relTolerance {
					t.Fatalf("bar %d: %s published %v, TA-Lib %v", i, name, u.Values[name], want[i])
				}
				if u.Close != c.Close || u.Version < c.Version {
					t.Fatalf("bar %d: close %v version %d, candle %v %d", i, u.Close, u.Version, c.Close, c.Version)
				}
			}
		}
	})

	t.Run("in-progress updates", func(t *testing.T) {
		h := h.sub(t)
		for _, i := range inProgress {
			rs := h.received(func(r received) bool { return r.SeriesID == pm && r.Start == all[i].Start && !r.Closed })
			if len(rs) != 1 {
				t.Fatalf("bar %d: %d in-progress updates, want 1", i, len(rs))
			}
			partial := slices.Clone(all[:i+1])
			partial[i] = partialOf(all[i])
			for _, name := range []string{"ema_20", "rsi_14", "atr_14"} {
				want := oracle(t, name, partial)[i]
				got := rs[0].Values[name]
				if want == nil {
					continue
				}
				if d := diff(got, want); d > relTolerance {
					t.Fatalf("bar %d in progress: %s %v, TA-Lib %v", i, name, got, want)
				}
			}
			closed := h.received(func(r received) bool { return r.SeriesID == pm && r.Start == all[i].Start && r.Closed })
			if len(closed) == 0 || closed[0].Version <= rs[0].Version {
				t.Fatalf("bar %d: closed update must follow with a higher version", i)
			}
		}
	})

	t.Run("close published after the next bar's first update", func(t *testing.T) {
		h := h.sub(t)
		for _, i := range reordered {
			rs := h.received(func(r received) bool { return r.SeriesID == pm && r.Start == all[i].Start && r.Closed })
			if len(rs) != 1 || rs[0].Version != all[i].Version {
				t.Fatalf("bar %d: closed updates %+v, want one of version %d", i, rs, all[i].Version)
			}
			for _, name := range positionMonitor {
				if want := oracle(t, name, all)[i]; want != nil && diff(rs[0].Values[name], want) > relTolerance {
					t.Fatalf("bar %d: %s %v, TA-Lib %v", i, name, rs[0].Values[name], want)
				}
			}
		}
	})

	t.Run("corrected candle", func(t *testing.T) {
		h := h.sub(t)
		// The correction republishes the bar and the one after it with
		// values of the corrected data and a higher version.
		for _, i := range []int{corrected, corrected + 1} {
			rs := h.received(func(r received) bool { return r.SeriesID == pm && r.Start == all[i].Start && r.Closed })
			if len(rs) != 2 {
				t.Fatalf("bar %d: %d closed updates, want the original and the corrected", i, len(rs))
			}
			if rs[1].Version <= rs[0].Version {
				t.Fatalf("bar %d: corrected version %d not above %d", i, rs[1].Version, rs[0].Version)
			}
			for _, name := range positionMonitor {
				if d := diff(rs[1].Values[name], oracle(t, name, all)[i]); d > relTolerance {
					t.Fatalf("bar %d: corrected %s %v differs from TA-Lib by %.3g", i, name, rs[1].Values[name], d)
				}
			}
		}
	})
}

// partialOf is an in-progress version of closed candle c, observed half a
// bar before its close: close halfway from the open, range to match.
func partialOf(c contract.Candle) contract.Candle {
	p := c
	p.Closed = false
	p.Close = (c.Open + c.Close) / 2
	p.High, p.Low = max(p.Open, p.Close), min(p.Open, p.Close)
	p.Version -= int64(c.Timeframe.Duration()/time.Microsecond) / 2
	return p
}

// statusHasUsers checks that a status lists the users.
func statusHasUsers(st contract.IndicatorsStatus, users ...string) error {
	for _, u := range users {
		if _, ok := st.Users[u]; !ok {
			return fmt.Errorf("status of %s does not list %s: %+v", st.Instance, u, st.Users)
		}
	}
	return nil
}

// TestConsumerLost deletes an instance's candle consumer (as the server
// does after a long disconnect) and checks that the instance recreates
// it, rebuilds from Redis and keeps every bar exact.
func TestConsumerLost(t *testing.T) {
	h := newHarness(t)
	h.startInstance("solo")
	ids := h.waitMembers(1)
	id := contract.SeriesID{User: "lost", UserID: 9, ExchangeID: 1, Symbol: "BTC-USD", Timeframe: contract.TF4h}
	h.monitorPositions(id)
	data := candles(t, id, 200, 1)
	h.feed(data[:100]...)
	h.waitUpdate(id, data[99].Start, true)
	if err := h.js.DeleteConsumer(context.Background(), contract.StreamCandles, contract.ServiceIndicators+"-"+ids["solo"]); err != nil {
		t.Fatal(err)
	}
	h.feed(data[100:]...)
	// Candles published before the consumer is back reach the series
	// through the rebuild; keep feeding the last bar's newer versions
	// until one is delivered.
	testenv.Eventually(t, 30*time.Second, func() error {
		if points := h.stored(id, "ema_20"); points[data[199].Start].Closed {
			return nil
		}
		again := data[199]
		again.Version++
		data[199] = again
		h.feed(again)
		return fmt.Errorf("last bar not computed yet")
	})
	for _, name := range positionMonitor {
		h.checkStored(id, name, data)
	}
}

// TestFirstBarStoredButNotYetPublished stores a series' first bar in
// Redis but publishes it only after the later bars (the feed stores a
// candle before it publishes it, and a publish may be retried), to a
// series set up while Redis held none of its candles: the second bar must
// not start the series, or every later value would miss the first bar
// and the rebuild the first bar starts could not replace them (their
// versions are the same).
func TestFirstBarStoredButNotYetPublished(t *testing.T) {
	h := newHarness(t)
	h.startInstance("solo")
	h.waitMembers(1)
	id := contract.SeriesID{User: "early", UserID: 21, ExchangeID: 6, Symbol: "BTC-USD", Timeframe: contract.TF1h}
	h.monitorPositions(id)

	data := candles(t, id, 80, 1)
	if _, err := h.store.WriteCandle(context.Background(), data[0]); err != nil {
		t.Fatal(err)
	}
	h.feed(data[1:]...)
	h.waitUpdate(id, data[len(data)-1].Start, true)
	h.feed(data[0])
	h.waitAllAcked()
	for _, name := range positionMonitor {
		h.checkStored(id, name, data)
	}
}
