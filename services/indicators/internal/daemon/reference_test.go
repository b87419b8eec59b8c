package daemon_test

import (
	"math"
	"slices"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// referenceUser is a user of TestMatchesCTalibReference: one series and
// the indicator parameters of its mode.
type referenceUser struct {
	id     contract.SeriesID
	mode   contract.Mode
	params contract.IndicatorParams
}

// TestMatchesCTalibReference runs the whole reference data set through a
// real vigil-indicators (NATS, Redis) for three users whose indicators
// together are every column of shared/data/btcusd_1h.talib.csv and
// btcusd_1h.talib-params.csv, and checks every bar of every column, both
// stored in Redis and published: a value where C TA-Lib has one (all of an
// indicator's columns; MACD-V publishes its line with its signal), none
// (warming, nothing stored) where it has none.
func TestMatchesCTalibReference(t *testing.T) {
	h := newHarness(t)
	h.startInstance("solo")
	h.waitMembers(1)
	ref := testenv.Talib(t)
	users := []referenceUser{
		{contract.SeriesID{User: "ref-a", UserID: 1, ExchangeID: 1, Symbol: "BTC-USD", Timeframe: contract.TF1h}, contract.ModePositionMonitor,
			contract.IndicatorParams{EMA: []int{12, 26}, SMA: []int{20}, RSI: 14, MACD: &contract.MACDParams{Fast: 12, Slow: 26, Signal: 9},
				ATR: 14, Bollinger: &contract.BollingerParam{Period: 20, StdDev: 2}}},
		{contract.SeriesID{User: "ref-b", UserID: 2, ExchangeID: 2, Symbol: "BTC-USD", Timeframe: contract.TF1h}, contract.ModePositionMonitor,
			contract.IndicatorParams{EMA: []int{9}, SMA: []int{10}, RSI: 7, MACD: &contract.MACDParams{Fast: 5, Slow: 35, Signal: 5},
				ATR: 26, Bollinger: &contract.BollingerParam{Period: 10, StdDev: 2.5}}},
		{contract.SeriesID{User: "ref-c", UserID: 3, ExchangeID: 3, Symbol: "BTC-USD", Timeframe: contract.TF1m}, contract.ModeScalperMACDV,
			contract.IndicatorParams{MACDV: &contract.MACDParams{Fast: 12, Slow: 26, Signal: 9}}},
	}
	covered := map[string]contract.SeriesID{}
	for _, u := range users {
		h.putState(contract.DesiredState{User: u.id.User, UserID: u.id.UserID, ExchangeID: u.id.ExchangeID, Mode: u.mode,
			Symbols: []string{u.id.Symbol}, Settings: contract.Settings{Mode: u.mode, Indicators: u.params}})
		for _, spec := range u.params.IndicatorSpecs(u.mode) {
			if _, dup := covered[spec.Name]; !dup {
				covered[spec.Name] = u.id
			}
		}
	}
	for name := range ref.Values {
		if _, ok := covered[name]; !ok {
			t.Fatalf("reference indicator %s is computed for no user", name)
		}
	}
	testenv.Eventually(t, 10*time.Second, func() error { return statusHasUsers(h.statuses(1)[0], "ref-a", "ref-b", "ref-c") })

	series := make([][]contract.Candle, len(users))
	for k, u := range users {
		series[k] = candles(t, u.id, len(ref.Starts), 1)
	}
	const flush = 50 // candles of one series per feed flush
	for i := 0; i < len(ref.Starts); i += flush {
		for _, cs := range series {
			h.feedFlush(cs[i:min(i+flush, len(cs))]...)
		}
	}
	for k, u := range users {
		h.waitUpdate(u.id, series[k][len(series[k])-1].Start, true)
	}

	for name, fields := range ref.Values {
		id := covered[name]
		cs := series[slices.IndexFunc(users, func(u referenceUser) bool { return u.id == id })]
		t.Run(name, func(t *testing.T) {
			h := h.sub(t)
			stored := h.stored(id, name)
			published := map[int64]contract.IndicatorUpdate{}
			for _, r := range h.received(func(r received) bool { return r.SeriesID == id && r.Closed }) {
				published[r.Start] = r.IndicatorUpdate // the newest of a bar last
			}
			worst, first := 0.0, -1
			for i, c := range cs {
				want := contract.Fields{}
				for field, column := range fields {
					if !math.IsNaN(column[i]) {
						want[field] = column[i]
					}
				}
				warm := len(want) == len(fields)
				p, isStored := stored[c.Start]
				u, isPublished := published[c.Start]
				switch {
				case !isPublished:
					t.Fatalf("bar %d: no closed update published", i)
				case !warm && (isStored || u.Values[name] != nil || !slices.Contains(u.Warming, name)):
					t.Fatalf("bar %d: C TA-Lib has no value yet (%v), but stored %v %+v, published %v warming %v",
						i, want, isStored, p.Fields, u.Values[name], u.Warming)
				case !warm:
					continue
				case !isStored || !p.Closed:
					t.Fatalf("bar %d: stored %v closed %v, want C TA-Lib's %v", i, isStored, p.Closed, want)
				}
				if first < 0 {
					first = i
				}
				for what, got := range map[string]contract.Fields{"stored": p.Fields, "published": u.Values[name]} {
					d := diff(got, want)
					if !(d <= relTolerance) {
						t.Fatalf("bar %d: %s %v, C TA-Lib %v (error %.3g)", i, what, got, want, d)
					}
					worst = max(worst, d)
				}
			}
			t.Logf("%d bars, first value at bar %d, largest error %.3g", len(cs), first, worst)
		})
	}
}
