package daemon_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// TestFailover runs two instances, kills one while candles flow (a
// graceful shutdown, and a SIGKILL of a separate process), and checks that
// its series moved to the other one within seconds, were never computed by
// both at once, and that every closed bar has exactly TA-Lib's values.
func TestFailover(t *testing.T) {
	tests := []struct {
		name  string
		crash bool
	}{
		{"graceful shutdown", false},
		{"crash", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			var victim *instance
			if tt.crash {
				victim = h.startProcess("victim")
			} else {
				victim = h.startInstance("victim")
			}
			h.startInstance("survivor")
			ids := h.waitMembers(2)
			members := []string{ids["victim"], ids["survivor"]}

			// Three 1h series owned by each instance.
			owned := map[string][]contract.SeriesID{}
			var symbols []string
			for i := 0; len(owned[ids["victim"]]) < 3 || len(owned[ids["survivor"]]) < 3; i++ {
				id := contract.SeriesID{User: "fo", UserID: 11, ExchangeID: 2, Symbol: fmt.Sprintf("S%d-USD", i), Timeframe: contract.TF1h}
				owner := ownerOf(members, id)
				if len(owned[owner]) < 3 {
					owned[owner] = append(owned[owner], id)
					symbols = append(symbols, id.Symbol)
				}
			}
			h.putState(contract.DesiredState{User: "fo", UserID: 11, ExchangeID: 2, Mode: contract.ModePositionMonitor, Symbols: symbols})
			series := append(slices.Clone(owned[ids["victim"]]), owned[ids["survivor"]]...)
			testenv.Eventually(t, 10*time.Second, func() error {
				n := 0
				for _, st := range h.statuses(2) {
					n += st.Users["fo"].Series
				}
				if n != 3*len(symbols) { // 1h, 4h and 1d of each symbol
					return fmt.Errorf("%d series running", n)
				}
				return nil
			})

			const bars = 400
			data := map[contract.SeriesID][]contract.Candle{}
			for i, id := range series {
				data[id] = candles(t, id, bars, 1+float64(i)/10)
			}
			var killed time.Time
			for i := range bars {
				if i == bars/2 {
					victim.stop() // mid-stream: the victim may be processing
					killed = time.Now()
				}
				for _, id := range series {
					h.feed(data[id][i])
				}
			}
			for _, id := range series {
				h.waitUpdate(id, data[id][bars-1].Start, true)
			}
			t.Logf("all series at the last bar %s after the kill", time.Since(killed).Round(time.Millisecond))
			for _, id := range owned[ids["victim"]] {
				rs := h.received(func(r received) bool { return r.SeriesID == id && r.instance == ids["survivor"] })
				moved := rs[0].ComputedAt.Sub(killed)
				t.Logf("%s moved to the survivor %s after the kill", id, moved.Round(time.Millisecond))
				if moved > 10*time.Second {
					t.Errorf("%s took %s to move", id, moved)
				}
			}

			for _, id := range series {
				for _, name := range positionMonitor {
					h.checkStored(id, name, data[id])
				}
			}
			// Each series was published by one instance at a time: the
			// survivor's never by the victim, the victim's first by the
			// victim, then (after at most one switch) by the survivor.
			for owner, list := range owned {
				for _, id := range list {
					var seq []string
					for _, r := range h.received(func(r received) bool { return r.SeriesID == id }) {
						if len(seq) == 0 || seq[len(seq)-1] != r.instance {
							seq = append(seq, r.instance)
						}
					}
					want := []string{ids["survivor"]}
					if owner == ids["victim"] {
						want = []string{ids["victim"], ids["survivor"]}
					}
					if !slices.Equal(seq, want) {
						t.Errorf("%s (owner %s): published by %v, want %v", id, owner, seq, want)
					}
				}
			}
		})
	}
}
