package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sync"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
)

// base is the start of bar 0 of every test series: 2026-01-01T00:00:00Z.
const base = int64(1_767_225_600)

// testClock is the engine's clock in tests.
type testClock struct{ now time.Time }

func (c *testClock) Now() time.Time { return c.now }

// step is one update of a hand-made series for a single rule.
type step struct {
	bar     int     // bar index after base
	live    bool    // an in-progress update instead of a closed bar
	a, b    float64 // the rule's series value and its Other series value
	absent  bool    // the rule's series is missing from the update
	noOther bool    // the Other series is missing from the update
	warming bool    // the rule's indicator is listed as warming (its value is still set)
	version int64   // update version, 1 when 0
	// age is how long after the update's reference time (bar end when
	// closed, bar start when live) the update is evaluated; 1s when 0.
	age  time.Duration
	fire bool // whether this step must fire exactly one alert
}

func ptr(v float64) *float64 { return &v }

// cooldownText writes d as a rule's cooldown, empty for none.
func cooldownText(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

func rsiCross(op contract.RuleOp, level float64) contract.Rule {
	return contract.Rule{ID: "rsi-cross", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleCross,
		SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}, Op: op, Value: ptr(level)}
}

func rsiThreshold(op contract.RuleOp, level float64, cooldown time.Duration) contract.Rule {
	return contract.Rule{ID: "rsi-level", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleThreshold,
		SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}, Op: op, Value: ptr(level), Cooldown: cooldownText(cooldown)}
}

func emaCross(op contract.RuleOp) contract.Rule {
	return contract.Rule{ID: "ema-cross", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleCross,
		SeriesRef: contract.SeriesRef{Indicator: "ema_20"}, Op: op, Other: &contract.SeriesRef{Indicator: "ema_50"}}
}

func macdvZone(zone contract.MACDVZone) contract.Rule {
	return contract.Rule{ID: "macdv-zone", Symbol: "ETH-USD", Timeframe: contract.TF5m, Kind: contract.RuleMACDVZone,
		SeriesRef: contract.SeriesRef{Indicator: "macdv_12_26_9", Field: "macd"}, Zone: zone}
}

// setValue puts v into u where ref reads it.
func setValue(u *contract.IndicatorUpdate, ref contract.SeriesRef, defaultField string, v float64) {
	if ref.IsPrice() {
		u.Close = v
		return
	}
	field := ref.Field
	if field == "" {
		field = defaultField
	}
	if u.Values[ref.Indicator] == nil {
		u.Values[ref.Indicator] = contract.Fields{}
	}
	u.Values[ref.Indicator][field] = v
}

// updateFor builds the update of step s for rule r.
func updateFor(r contract.Rule, s step) contract.IndicatorUpdate {
	bar := int64(r.Timeframe.Duration() / time.Second)
	u := contract.IndicatorUpdate{
		SeriesID: contract.SeriesID{User: "alice", UserID: 7, ExchangeID: 3, Symbol: r.Symbol, Timeframe: r.Timeframe},
		Start:    base + int64(s.bar)*bar,
		Closed:   !s.live,
		Version:  max(s.version, 1),
		Close:    100,
		Values:   map[string]contract.Fields{"atr_14": {"value": 1.5}},
	}
	defaultField := "value"
	if r.Kind == contract.RuleMACDVZone {
		defaultField = "macd"
	}
	if s.warming {
		// The value is set too: Warming must win over a leftover value.
		u.Warming = []string{r.Indicator}
	}
	if !s.absent {
		setValue(&u, r.SeriesRef, defaultField, s.a)
	}
	if r.Other != nil && !s.noOther {
		setValue(&u, *r.Other, "value", s.b)
	}
	return u
}

// evalTime is when the engine sees u when it is age old.
func evalTime(u contract.IndicatorUpdate, age time.Duration) time.Time {
	if age == 0 {
		age = time.Second
	}
	ref := time.Unix(u.Start, 0)
	if u.Closed {
		ref = ref.Add(u.Timeframe.Duration())
	}
	return ref.Add(age)
}

// play feeds steps for rule r into e and checks which steps fire.
func play(t *testing.T, e *Engine, c *testClock, r contract.Rule, steps []step) {
	t.Helper()
	for n, s := range steps {
		u := updateFor(r, s)
		c.now = evalTime(u, s.age)
		got := e.Evaluate(u)
		if len(got) > 1 || (len(got) == 1) != s.fire {
			t.Errorf("step %d (bar %d, live %v, a %v, b %v): got %d alerts %+v, want fire=%v", n, s.bar, s.live, s.a, s.b, len(got), got, s.fire)
		}
	}
}

// newTestEngine builds an engine for rules with a clock of its own.
func newTestEngine(t *testing.T, rules ...contract.Rule) (*Engine, *testClock) {
	t.Helper()
	c := &testClock{now: time.Unix(base, 0)}
	return mustEngine(t, c, rules...), c
}

// mustEngine builds an engine for rules on clock c.
func mustEngine(t *testing.T, c *testClock, rules ...contract.Rule) *Engine {
	t.Helper()
	e, err := NewEngine(rules, c.Now)
	if err != nil {
		t.Fatalf("NewEngine: %v", err)
	}
	return e
}

type seriesCase struct {
	name  string
	rule  contract.Rule
	steps []step
}

func runSeriesCases(t *testing.T, cases []seriesCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, c := newTestEngine(t, tc.rule)
			play(t, e, c, tc.rule, tc.steps)
		})
	}
}

func TestThresholdRules(t *testing.T) {
	obImbalance := contract.Rule{ID: "ob-imb", Symbol: "BTC-USD", Timeframe: contract.TF1m, Kind: contract.RuleOrderBook,
		SeriesRef: contract.SeriesRef{Indicator: "ob_imbalance"}, Op: contract.OpBelow, Value: ptr(-0.5), Evaluate: contract.OnLive}
	obDepthBid := contract.Rule{ID: "ob-bid", Symbol: "BTC-USD", Timeframe: contract.TF1m, Kind: contract.RuleOrderBook,
		SeriesRef: contract.SeriesRef{Indicator: "ob_depth", Field: "bid"}, Op: contract.OpAbove, Value: ptr(10)}
	priceAbove := contract.Rule{ID: "price-level", Symbol: "BTC-USD", Timeframe: contract.TF4h, Kind: contract.RuleThreshold,
		SeriesRef: contract.SeriesRef{Indicator: "price"}, Op: contract.OpAbove, Value: ptr(100_000)}
	runSeriesCases(t, []seriesCase{
		{"above fires on entering only, exactly at the threshold does not hold", rsiThreshold(contract.OpAbove, 70, 0), []step{
			{bar: 0, a: 60}, {bar: 1, a: 70}, {bar: 2, a: 71, fire: true}, {bar: 3, a: 72}, {bar: 4, a: 69}, {bar: 5, a: 75, fire: true},
		}},
		{"below is mirrored", rsiThreshold(contract.OpBelow, 30, 0), []step{
			{bar: 0, a: 40}, {bar: 1, a: 30}, {bar: 2, a: 29.99, fire: true}, {bar: 3, a: 25}, {bar: 4, a: 30}, {bar: 5, a: 29, fire: true},
		}},
		{"holding from the first bar never fires without a cooldown", rsiThreshold(contract.OpAbove, 70, 0), []step{
			{bar: 0, a: 80}, {bar: 1, a: 81}, {bar: 2, a: 82},
		}},
		{"a cooldown reminds at most once per cooldown while holding", rsiThreshold(contract.OpAbove, 70, 3*time.Hour), []step{
			{bar: 0, a: 60}, {bar: 1, a: 71, fire: true}, {bar: 2, a: 72}, {bar: 3, a: 73}, {bar: 4, a: 74, fire: true},
			{bar: 5, a: 75}, {bar: 6, a: 76}, {bar: 7, a: 77, fire: true},
		}},
		{"a cooldown suppresses flapping re-entries", rsiThreshold(contract.OpAbove, 70, 3*time.Hour), []step{
			{bar: 0, a: 60}, {bar: 1, a: 71, fire: true}, {bar: 2, a: 60}, {bar: 3, a: 71}, {bar: 4, a: 60}, {bar: 5, a: 71, fire: true},
		}},
		{"a cooldown rule holding since priming reminds on the first primed bar", rsiThreshold(contract.OpAbove, 70, 2*time.Hour), []step{
			{bar: 0, a: 80}, {bar: 1, a: 81, fire: true}, {bar: 2, a: 82}, {bar: 3, a: 83, fire: true},
		}},
		{"price reads the close", priceAbove, []step{
			{bar: 0, a: 99_999.5}, {bar: 1, a: 100_000}, {bar: 2, a: 100_000.01, fire: true},
		}},
		{"orderbook imbalance below, live", obImbalance, []step{
			{bar: 0, a: 0.1}, {bar: 1, live: true, a: -0.5}, {bar: 1, live: true, a: -0.6, fire: true}, {bar: 1, live: true, a: -0.7},
			{bar: 1, a: -0.8}, {bar: 2, live: true, a: -0.9},
		}},
		{"orderbook depth reads its field", obDepthBid, []step{
			{bar: 0, a: 5}, {bar: 1, a: 10}, {bar: 2, a: 12, fire: true},
		}},
	})
}

func TestCrossRules(t *testing.T) {
	priceBelow := contract.Rule{ID: "price-cross", Symbol: "BTC-USD", Timeframe: contract.TF1d, Kind: contract.RuleCross,
		SeriesRef: contract.SeriesRef{Indicator: "price"}, Op: contract.OpCrossesBelow, Value: ptr(90_000)}
	macdSignal := contract.Rule{ID: "macd-signal", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleCross,
		SeriesRef: contract.SeriesRef{Indicator: "macd_12_26_9", Field: "macd"}, Op: contract.OpCrossesAbove,
		Other: &contract.SeriesRef{Indicator: "macd_12_26_9", Field: "signal"}}
	runSeriesCases(t, []seriesCase{
		{"equal then equal is no cross, equal then above is", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 70}, {bar: 1, a: 70}, {bar: 2, a: 71, fire: true}, {bar: 3, a: 72},
		}},
		{"below then equal is no cross", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 69}, {bar: 1, a: 70}, {bar: 2, a: 71, fire: true},
		}},
		{"every upward cross fires once", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 71}, {bar: 1, a: 69}, {bar: 2, a: 71, fire: true}, {bar: 3, a: 75}, {bar: 4, a: 65}, {bar: 5, a: 70.01, fire: true},
		}},
		{"crosses_below is mirrored", rsiCross(contract.OpCrossesBelow, 30), []step{
			{bar: 0, a: 31}, {bar: 1, a: 30}, {bar: 2, a: 30}, {bar: 3, a: 29, fire: true}, {bar: 4, a: 31}, {bar: 5, a: 29, fire: true},
		}},
		{"price crosses a level", priceBelow, []step{
			{bar: 0, a: 91_000}, {bar: 1, a: 89_999, fire: true}, {bar: 2, a: 88_000},
		}},
		{"two series, both moving", emaCross(contract.OpCrossesAbove), []step{
			{bar: 0, a: 99, b: 100}, {bar: 1, a: 100, b: 100}, {bar: 2, a: 101, b: 100.5, fire: true},
			{bar: 3, a: 102, b: 101}, {bar: 4, a: 100, b: 101}, {bar: 5, a: 100, b: 99, fire: true},
		}},
		{"two series, equal then equal is no cross", emaCross(contract.OpCrossesBelow), []step{
			{bar: 0, a: 100, b: 100}, {bar: 1, a: 101, b: 101}, {bar: 2, a: 100, b: 101, fire: true},
		}},
		{"two fields of one indicator", macdSignal, []step{
			{bar: 0, a: -1, b: 0}, {bar: 1, a: 1, b: 0, fire: true},
		}},
		{"a gap of one bar resets the memory", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 69}, {bar: 2, a: 71}, {bar: 3, a: 72}, {bar: 4, a: 69}, {bar: 5, a: 71, fire: true},
		}},
		{"an absent value is not evaluated and does not become the previous value", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 69}, {bar: 1, absent: true}, {bar: 2, a: 71}, {bar: 3, a: 69}, {bar: 4, a: 71, fire: true},
		}},
		{"a warming indicator is not evaluated", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, warming: true, a: 10}, {bar: 1, warming: true, a: 90}, {bar: 2, a: 69}, {bar: 3, warming: true, a: 80},
			{bar: 4, a: 71}, {bar: 5, a: 69}, {bar: 6, a: 71, fire: true},
		}},
		{"a value that is not finite counts as missing", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 69}, {bar: 1, a: math.Inf(1)}, {bar: 2, a: 71}, {bar: 3, a: 69}, {bar: 4, a: math.NaN()}, {bar: 5, a: 71},
			{bar: 6, a: 69}, {bar: 7, a: 71, fire: true},
		}},
		{"a close that is not finite counts as missing", priceBelow, []step{
			{bar: 0, a: 91_000}, {bar: 1, a: math.Inf(-1)}, {bar: 2, a: 89_000}, {bar: 3, a: 91_000}, {bar: 4, a: 89_000, fire: true},
		}},
		{"a missing other series is not evaluated", emaCross(contract.OpCrossesAbove), []step{
			{bar: 0, a: 99, b: 100}, {bar: 1, a: 101, noOther: true}, {bar: 2, a: 101, b: 100}, {bar: 3, a: 99, b: 100},
			{bar: 4, a: 101, b: 100, fire: true},
		}},
	})
}

func TestMACDVZoneRules(t *testing.T) {
	hist := macdvZone(contract.ZoneBullish)
	hist.Field = "hist"
	noField := macdvZone("")
	noField.Field = ""
	runSeriesCases(t, []seriesCase{
		{"any zone fires on every change, boundaries belong to the inner zone", macdvZone(""), []step{
			{bar: 0, a: 0}, {bar: 1, a: 40}, {bar: 2, a: 60, fire: true}, {bar: 3, a: 150}, {bar: 4, a: 150.5, fire: true},
			{bar: 5, a: 160}, {bar: 6, a: 140, fire: true}, {bar: 7, a: 0, fire: true}, {bar: 8, a: -50},
			{bar: 9, a: -50.5, fire: true},
		}},
		{"one zone fires only on entering it", macdvZone(contract.ZoneOversold), []step{
			{bar: 0, a: -100}, {bar: 1, a: -150}, {bar: 2, a: -151, fire: true}, {bar: 3, a: -200}, {bar: 4, a: -100},
			{bar: 5, a: 0}, {bar: 6, a: -151, fire: true}, {bar: 7, a: -100}, {bar: 8, a: -160, fire: true},
		}},
		{"a value that is not finite is no zone", macdvZone(""), []step{
			{bar: 0, a: 0}, {bar: 1, a: math.NaN()}, {bar: 2, a: math.Inf(-1)}, {bar: 3, a: 0}, {bar: 4, a: 60, fire: true},
		}},
		{"an empty field reads macd", noField, []step{
			{bar: 0, a: 0}, {bar: 1, a: 200, fire: true},
		}},
		{"a field other than macd is read when given", hist, []step{
			{bar: 0, a: 0}, {bar: 1, a: 51, fire: true},
		}},
	})
}

func TestLiveAndCloseRules(t *testing.T) {
	live := rsiCross(contract.OpCrossesAbove, 70)
	live.Evaluate = contract.OnLive
	liveLevel := rsiThreshold(contract.OpAbove, 70, 0)
	liveLevel.Evaluate = contract.OnLive
	runSeriesCases(t, []seriesCase{
		{"a live rule compares live updates with the last closed bar and fires once per bar", live, []step{
			{bar: 0, a: 69}, {bar: 1, live: true, a: 70}, {bar: 1, live: true, a: 71, fire: true}, {bar: 1, live: true, a: 72},
			{bar: 1, live: true, a: 69}, {bar: 1, live: true, a: 71}, {bar: 1, a: 71},
			{bar: 2, live: true, a: 72}, {bar: 2, a: 69}, {bar: 3, live: true, a: 71, fire: true},
		}},
		{"a live rule also fires on the closed update", live, []step{
			{bar: 0, a: 69}, {bar: 1, live: true, a: 69.5}, {bar: 1, a: 71, fire: true}, {bar: 2, live: true, a: 72},
		}},
		{"live updates never become the previous value", live, []step{
			{bar: 0, live: true, a: 69}, {bar: 1, live: true, a: 71}, {bar: 1, a: 69}, {bar: 2, live: true, a: 71, fire: true},
		}},
		{"a live update of a bar already closed is ignored", live, []step{
			{bar: 0, a: 69}, {bar: 1, a: 69}, {bar: 1, live: true, a: 71}, {bar: 2, live: true, a: 71, fire: true},
		}},
		{"a close rule ignores live updates", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 69}, {bar: 1, live: true, a: 71}, {bar: 1, live: true, a: 72}, {bar: 1, a: 71, fire: true},
		}},
		{"a live threshold fires on entering intrabar, once", liveLevel, []step{
			{bar: 0, a: 60}, {bar: 1, live: true, a: 71, fire: true}, {bar: 1, live: true, a: 72}, {bar: 1, a: 72},
			{bar: 2, live: true, a: 73}, {bar: 2, a: 65}, {bar: 3, live: true, a: 65}, {bar: 3, live: true, a: 70.5, fire: true},
		}},
	})
}

func TestFreshness(t *testing.T) {
	live := rsiCross(contract.OpCrossesAbove, 70)
	live.Evaluate = contract.OnLive
	runSeriesCases(t, []seriesCase{
		{"a closed bar ending exactly two bars ago is fresh", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 69, age: 2 * time.Hour}, {bar: 1, a: 71, age: 2 * time.Hour, fire: true},
		}},
		{"a closed bar ending more than two bars ago is ignored and not remembered", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 69}, {bar: 1, a: 71, age: 2*time.Hour + time.Second}, {bar: 2, a: 72},
			{bar: 3, a: 69, age: 5 * time.Hour}, {bar: 4, a: 71}, {bar: 5, a: 69}, {bar: 6, a: 71, fire: true},
		}},
		{"a live update of a bar that started more than two bars ago is ignored", live, []step{
			{bar: 0, a: 69}, {bar: 1, live: true, a: 71, age: 2*time.Hour + time.Second}, {bar: 1, live: true, a: 71, fire: true},
		}},
	})
}

func TestVersionsAndOrder(t *testing.T) {
	runSeriesCases(t, []seriesCase{
		{"redelivery of a fired update fires nothing", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 69}, {bar: 1, a: 71, fire: true}, {bar: 1, a: 71}, {bar: 1, a: 71}, {bar: 0, a: 69}, {bar: 1, a: 71},
		}},
		{"a newer version of the last bar is evaluated against the bar before", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 69}, {bar: 1, a: 70, version: 1}, {bar: 1, a: 71, version: 2, fire: true},
			{bar: 1, a: 69, version: 1}, {bar: 2, a: 72},
		}},
		{"a correction replaces the remembered value", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 69}, {bar: 1, a: 71, version: 1, fire: true}, {bar: 1, a: 69, version: 2}, {bar: 2, a: 72, fire: true},
		}},
		{"an older bar arriving late neither fires nor replaces the memory", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 69}, {bar: 1, a: 69}, {bar: 0, a: 75, version: 9}, {bar: 2, a: 71, fire: true},
		}},
		{"a correction after a late older bar still compares with the right bar", rsiCross(contract.OpCrossesAbove, 70), []step{
			{bar: 0, a: 69}, {bar: 1, a: 69}, {bar: 0, a: 75, version: 9}, {bar: 1, a: 71, version: 2, fire: true},
		}},
	})
}

func TestUpdatesOfOtherSeriesAreIgnored(t *testing.T) {
	r := rsiCross(contract.OpCrossesAbove, 70)
	e, c := newTestEngine(t, r)
	play(t, e, c, r, []step{{bar: 0, a: 69}})
	u := updateFor(r, step{bar: 1, a: 71})
	for name, mutate := range map[string]func(*contract.IndicatorUpdate){
		"other symbol":      func(u *contract.IndicatorUpdate) { u.Symbol = "ETH-USD" },
		"other timeframe":   func(u *contract.IndicatorUpdate) { u.Timeframe = contract.TF4h },
		"invalid timeframe": func(u *contract.IndicatorUpdate) { u.Timeframe = "2h" },
	} {
		t.Run(name, func(t *testing.T) {
			v := u
			mutate(&v)
			if got := e.Evaluate(v); got != nil {
				t.Errorf("Evaluate = %+v, want nil", got)
			}
		})
	}
	c.now = evalTime(u, 0)
	if got := e.Evaluate(u); len(got) != 1 {
		t.Errorf("the rule's own series after the others: %d alerts, want 1 (memory must be untouched)", len(got))
	}
}

func TestAlertContents(t *testing.T) {
	live := emaCross(contract.OpCrossesAbove)
	live.Evaluate = contract.OnLive
	cases := []struct {
		name        string
		rule        contract.Rule
		prev, cur   step
		wantMessage string
		wantValue   float64
	}{
		{"level cross", rsiCross(contract.OpCrossesAbove, 70), step{bar: 0, a: 69.2}, step{bar: 1, a: 71.3},
			"BTC-USD 1h rsi_14 crossed above 70 (71.3)", 71.3},
		{"series cross on the live bar", live, step{bar: 0, a: 99, b: 100}, step{bar: 1, live: true, a: 101.456, b: 100.2},
			"BTC-USD 1h ema_20 crossed above ema_50 (101.46 vs 100.2) on the live bar", 101.456},
		{"threshold entering", rsiThreshold(contract.OpBelow, 30, 0), step{bar: 0, a: 31}, step{bar: 1, a: 28.25},
			"BTC-USD 1h rsi_14 fell below 30 (28.25)", 28.25},
		{"threshold reminder", rsiThreshold(contract.OpAbove, 70, time.Hour), step{bar: 0, a: 75}, step{bar: 1, a: 76},
			"BTC-USD 1h rsi_14 is still above 70 (76)", 76},
		{"zone", macdvZone(contract.ZoneOverbought), step{bar: 0, a: 140}, step{bar: 1, a: 151.2},
			"ETH-USD 5m macdv_12_26_9 entered the overbought zone from bullish (151.2)", 151.2},
		{"orderbook spread, small numbers", contract.Rule{ID: "spread", Symbol: "BTC-USD", Timeframe: contract.TF1m, Kind: contract.RuleOrderBook,
			SeriesRef: contract.SeriesRef{Indicator: "ob_spread"}, Op: contract.OpAbove, Value: ptr(0.0005)},
			step{bar: 0, a: 0.0001}, step{bar: 1, a: 0.00061234},
			"BTC-USD 1m ob_spread rose above 0.0005 (0.0006123)", 0.00061234},
		{"field named when not the default", contract.Rule{ID: "bid", Symbol: "BTC-USD", Timeframe: contract.TF1m, Kind: contract.RuleOrderBook,
			SeriesRef: contract.SeriesRef{Indicator: "ob_depth", Field: "bid"}, Op: contract.OpAbove, Value: ptr(1500)},
			step{bar: 0, a: 1000}, step{bar: 1, a: 2000},
			"BTC-USD 1m ob_depth.bid rose above 1500 (2000)", 2000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, c := newTestEngine(t, tc.rule)
			play(t, e, c, tc.rule, []step{tc.prev})
			u := updateFor(tc.rule, tc.cur)
			c.now = evalTime(u, 3*time.Second)
			got := e.Evaluate(u)
			want := []contract.Alert{{
				ID:         fmt.Sprintf("alice.%s.%d", tc.rule.ID, u.Start),
				User:       "alice",
				UserID:     7,
				ExchangeID: 3,
				RuleID:     tc.rule.ID,
				Kind:       tc.rule.Kind,
				Symbol:     tc.rule.Symbol,
				Timeframe:  tc.rule.Timeframe,
				BarStart:   u.Start,
				Message:    tc.wantMessage,
				Value:      tc.wantValue,
				FiredAt:    c.now,
			}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("alerts\n got %+v\nwant %+v", got, want)
			}
			if got[0].ID != contract.AlertID("alice", tc.rule.ID, u.Start) {
				t.Errorf("ID %q is not contract.AlertID", got[0].ID)
			}
		})
	}
}

func TestAlertsComeInRuleOrder(t *testing.T) {
	a := rsiCross(contract.OpCrossesAbove, 70)
	b := rsiThreshold(contract.OpAbove, 70, 0)
	for _, order := range [][]contract.Rule{{a, b}, {b, a}} {
		t.Run(order[0].ID+" first", func(t *testing.T) {
			e, c := newTestEngine(t, order...)
			play(t, e, c, a, []step{{bar: 0, a: 69}})
			u := updateFor(a, step{bar: 1, a: 71})
			c.now = evalTime(u, 0)
			got := e.Evaluate(u)
			if len(got) != 2 || got[0].RuleID != order[0].ID || got[1].RuleID != order[1].ID {
				t.Errorf("alerts %+v, want rules %s then %s", got, order[0].ID, order[1].ID)
			}
		})
	}
}

func TestResetWarmAndMarkStale(t *testing.T) {
	btc := rsiCross(contract.OpCrossesAbove, 70)
	eth := btc
	eth.ID, eth.Symbol = "eth-cross", "ETH-USD"
	ethDaily := eth
	ethDaily.ID, ethDaily.Timeframe = "eth-daily", contract.TF1d
	all := []contract.Rule{btc, eth, ethDaily}
	cases := []struct {
		name      string
		reset     func(*Engine)
		wantFires map[string]bool // rule id → fires on the first bar after the reset
	}{
		{"ResetWarm resets every rule", (*Engine).ResetWarm, map[string]bool{}},
		{"MarkStale of one series", func(e *Engine) { e.MarkStale("BTC-USD", contract.TF1h) },
			map[string]bool{"eth-cross": true, "eth-daily": true}},
		{"MarkStale of a symbol", func(e *Engine) { e.MarkStale("ETH-USD", "") }, map[string]bool{"rsi-cross": true}},
		{"MarkStale of a timeframe", func(e *Engine) { e.MarkStale("", contract.TF1h) }, map[string]bool{"eth-daily": true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, c := newTestEngine(t, all...)
			for _, r := range all {
				play(t, e, c, r, []step{{bar: 0, a: 69}})
			}
			tc.reset(e)
			for _, r := range all {
				play(t, e, c, r, []step{{bar: 1, a: 71, fire: tc.wantFires[r.ID]}})
			}
			// Whatever was reset is primed now and fires on the next cross.
			for _, r := range all {
				play(t, e, c, r, []step{{bar: 2, a: 69}, {bar: 3, a: 71, fire: true}})
			}
		})
	}
	t.Run("a reset keeps the fired-bar memory", func(t *testing.T) {
		e, c := newTestEngine(t, btc)
		play(t, e, c, btc, []step{{bar: 0, a: 69}, {bar: 1, a: 71, fire: true}})
		e.ResetWarm()
		play(t, e, c, btc, []step{{bar: 0, a: 69}, {bar: 1, a: 71}})
	})
	t.Run("a resume after a pause never fires on the stale transition", func(t *testing.T) {
		e, c := newTestEngine(t, btc)
		play(t, e, c, btc, []step{{bar: 0, a: 69}, {bar: 1, a: 69}})
		e.ResetWarm()
		// Backfilled bars of the pause are stale; the first fresh bar only primes.
		play(t, e, c, btc, []step{
			{bar: 2, a: 69, age: 10 * time.Hour}, {bar: 3, a: 75, age: 9 * time.Hour},
			{bar: 11, a: 76}, {bar: 12, a: 69}, {bar: 13, a: 71, fire: true},
		})
	})
}

func TestReplace(t *testing.T) {
	cross := rsiCross(contract.OpCrossesAbove, 70)
	changed := cross
	changed.Value = ptr(70.5)
	other := rsiThreshold(contract.OpAbove, 70, 0)
	hourly, sixtyMinutes := cross, cross
	hourly.Cooldown, sixtyMinutes.Cooldown = "1h", "60m"
	cases := []struct {
		name      string
		first     contract.Rule
		next      [][]contract.Rule // rule sets installed one after the other
		wantFires map[string]bool
	}{
		{"an unchanged rule keeps its memory, a new one needs priming", cross, [][]contract.Rule{{other, cross}}, map[string]bool{"rsi-cross": true}},
		{"a changed rule needs priming", cross, [][]contract.Rule{{changed}}, map[string]bool{}},
		{"a cooldown written differently is unchanged", hourly, [][]contract.Rule{{sixtyMinutes}}, map[string]bool{"rsi-cross": true}},
		{"a removed and re-added rule needs priming", cross, [][]contract.Rule{nil, {cross}}, map[string]bool{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, c := newTestEngine(t, tc.first)
			play(t, e, c, tc.first, []step{{bar: 0, a: 69}})
			for _, rules := range tc.next {
				if err := e.Replace(rules); err != nil {
					t.Fatalf("Replace: %v", err)
				}
			}
			u := updateFor(cross, step{bar: 1, a: 71})
			c.now = evalTime(u, 0)
			fired := map[string]bool{}
			for _, a := range e.Evaluate(u) {
				fired[a.RuleID] = true
			}
			if !reflect.DeepEqual(fired, tc.wantFires) {
				t.Errorf("fired %v, want %v", fired, tc.wantFires)
			}
		})
	}
	t.Run("a changed rule keeps its fired-bar memory", func(t *testing.T) {
		live := cross
		live.Evaluate = contract.OnLive
		e, c := newTestEngine(t, live)
		play(t, e, c, live, []step{{bar: 0, a: 69}, {bar: 1, live: true, a: 71, fire: true}})
		relaxed := live
		relaxed.Cooldown = "1m"
		if err := e.Replace([]contract.Rule{relaxed}); err != nil {
			t.Fatalf("Replace: %v", err)
		}
		play(t, e, c, relaxed, []step{{bar: 0, a: 69}, {bar: 1, live: true, a: 72}, {bar: 1, a: 72}, {bar: 2, a: 69}, {bar: 3, a: 71, fire: true}})
	})
	t.Run("an invalid rule set changes nothing", func(t *testing.T) {
		e, c := newTestEngine(t, cross)
		play(t, e, c, cross, []step{{bar: 0, a: 69}})
		bad := cross
		bad.Value = nil
		if err := e.Replace([]contract.Rule{bad}); !errors.Is(err, ErrInvalidRule) {
			t.Fatalf("Replace error = %v, want ErrInvalidRule", err)
		}
		play(t, e, c, cross, []step{{bar: 1, a: 71, fire: true}})
	})
}

func TestSnapshotRestore(t *testing.T) {
	rules := []contract.Rule{rsiThreshold(contract.OpAbove, 70, 2*time.Hour), rsiCross(contract.OpCrossesAbove, 70), emaCross(contract.OpCrossesAbove)}
	// One update per bar carries every rule's inputs.
	series := []struct{ rsi, fast, slow float64 }{
		{60, 99, 100}, {71, 99.5, 100}, {72, 100.5, 100}, {69, 100.6, 100.2}, {73, 100.1, 100.3},
		{74, 100.2, 100.3}, {75, 100.4, 100.3}, {69, 100.5, 100.3}, {71, 100.6, 100.4},
	}
	update := func(i int) contract.IndicatorUpdate {
		u := updateFor(rules[0], step{bar: i, a: series[i].rsi})
		u.Values["ema_20"] = contract.Fields{"value": series[i].fast}
		u.Values["ema_50"] = contract.Fields{"value": series[i].slow}
		return u
	}
	for _, cut := range []int{0, 1, 3, 5} {
		t.Run(fmt.Sprintf("handover after bar %d", cut), func(t *testing.T) {
			alone, c := newTestEngine(t, rules...)
			first := mustEngine(t, c, rules...)
			var want, got []contract.Alert
			for i := range series {
				u := update(i)
				c.now = evalTime(u, 0)
				want = append(want, alone.Evaluate(u)...)
				if i <= cut {
					got = append(got, first.Evaluate(u)...)
				}
			}
			doc, err := json.Marshal(first.Snapshot())
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			var snap Snapshot
			if err := json.Unmarshal(doc, &snap); err != nil {
				t.Fatalf("unmarshal %s: %v", doc, err)
			}
			second := mustEngine(t, c, rules...)
			second.Restore(snap)
			if !reflect.DeepEqual(second.Snapshot(), first.Snapshot()) {
				t.Fatalf("restored snapshot\n got %+v\nwant %+v", second.Snapshot(), first.Snapshot())
			}
			for i := cut + 1; i < len(series); i++ {
				u := update(i)
				c.now = evalTime(u, 0)
				got = append(got, second.Evaluate(u)...)
			}
			if len(want) < 4 {
				t.Fatalf("the series fires only %d alerts, the test needs more", len(want))
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("alerts with a handover\n got %+v\nwant %+v", got, want)
			}
		})
	}
	t.Run("restore adopts values only for an unchanged definition", func(t *testing.T) {
		cross := rsiCross(contract.OpCrossesAbove, 70)
		src, c := newTestEngine(t, cross)
		play(t, src, c, cross, []step{{bar: 0, a: 69}, {bar: 1, a: 71, fire: true}, {bar: 2, a: 69}})
		snap := src.Snapshot()
		changed := cross
		changed.Value = ptr(70.5)
		dst := mustEngine(t, c, changed, emaCross(contract.OpCrossesAbove))
		dst.Restore(snap)
		got := dst.Snapshot().Rules["rsi-cross"]
		if got.Last != (BarValues{}) || got.LastFiredBar != base+3600 {
			t.Errorf("memory of the changed rule = %+v, want no values and last fired bar %d", got, base+3600)
		}
		if _, ok := dst.Snapshot().Rules["ema-cross"]; !ok {
			t.Errorf("snapshot lacks the rule absent from the restored snapshot")
		}
		play(t, dst, c, changed, []step{{bar: 3, a: 71}, {bar: 4, a: 69}, {bar: 5, a: 71, fire: true}})
	})
	t.Run("restore clears rules the snapshot lacks", func(t *testing.T) {
		cross := rsiCross(contract.OpCrossesAbove, 70)
		e, c := newTestEngine(t, cross)
		play(t, e, c, cross, []step{{bar: 0, a: 69}})
		e.Restore(Snapshot{})
		play(t, e, c, cross, []step{{bar: 1, a: 71}})
	})
	t.Run("json shape", func(t *testing.T) {
		cross := rsiCross(contract.OpCrossesAbove, 70)
		e, c := newTestEngine(t, cross)
		play(t, e, c, cross, []step{{bar: 0, a: 69}, {bar: 1, a: 71, fire: true}})
		doc, err := json.Marshal(e.Snapshot())
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		def := e.Snapshot().Rules["rsi-cross"].Definition
		want := fmt.Sprintf(`{"rules":{"rsi-cross":{"definition":"%s","last":{"start":%d,"version":1,"value":71},"before":{"start":%d,"version":1,"value":69},"last_fired_bar":%d}}}`,
			def, base+3600, base, base+3600)
		if string(doc) != want {
			t.Errorf("snapshot JSON\n got %s\nwant %s", doc, want)
		}
	})
}

func TestInvalidRules(t *testing.T) {
	valid := rsiCross(contract.OpCrossesAbove, 70)
	with := func(change func(*contract.Rule)) []contract.Rule {
		r := valid
		change(&r)
		return []contract.Rule{r}
	}
	cases := []struct {
		name      string
		rules     []contract.Rule
		wantField string
	}{
		{"duplicate id", []contract.Rule{valid, valid}, "rules[1](rsi-cross).id"},
		{"bad id", with(func(r *contract.Rule) { r.ID = "a.b" }), "rules[0](a.b).id"},
		{"bad symbol", with(func(r *contract.Rule) { r.Symbol = "btc*" }), "rules[0](rsi-cross).symbol"},
		{"bad timeframe", with(func(r *contract.Rule) { r.Timeframe = "2h" }), "rules[0](rsi-cross).timeframe"},
		{"no indicator", with(func(r *contract.Rule) { r.Indicator = "" }), "rules[0](rsi-cross).indicator"},
		{"unknown kind", with(func(r *contract.Rule) { r.Kind = "wave" }), "rules[0](rsi-cross).kind"},
		{"cross op on a threshold", with(func(r *contract.Rule) { r.Kind = contract.RuleThreshold }), "rules[0](rsi-cross).op"},
		{"threshold op on a cross", with(func(r *contract.Rule) { r.Op = contract.OpAbove }), "rules[0](rsi-cross).op"},
		{"level that is not finite", with(func(r *contract.Rule) { r.Value = ptr(math.Inf(1)) }), "rules[0](rsi-cross).value"},
		{"threshold without value", with(func(r *contract.Rule) { r.Kind, r.Op, r.Value = contract.RuleThreshold, contract.OpAbove, nil }), "rules[0](rsi-cross).value"},
		{"cross without value or other", with(func(r *contract.Rule) { r.Value = nil }), "rules[0](rsi-cross).value"},
		{"cross with value and other", with(func(r *contract.Rule) { r.Other = &contract.SeriesRef{Indicator: "ema_20"} }), "rules[0](rsi-cross).other"},
		{"cross against nothing", with(func(r *contract.Rule) { r.Value, r.Other = nil, &contract.SeriesRef{} }), "rules[0](rsi-cross).other.indicator"},
		{"unknown zone", with(func(r *contract.Rule) { r.Kind, r.Zone = contract.RuleMACDVZone, "sideways" }), "rules[0](rsi-cross).zone"},
		{"unknown evaluate", with(func(r *contract.Rule) { r.Evaluate = "tick" }), "rules[0](rsi-cross).evaluate"},
		{"negative cooldown", with(func(r *contract.Rule) { r.Cooldown = "-1m" }), "rules[0](rsi-cross).cooldown"},
		{"unparsable cooldown", with(func(r *contract.Rule) { r.Cooldown = "soon" }), "rules[0](rsi-cross).cooldown"},
		{"cooldown over 7 days", with(func(r *contract.Rule) { r.Cooldown = "169h" }), "rules[0](rsi-cross).cooldown"},
		{"other on a threshold", with(func(r *contract.Rule) {
			r.Kind, r.Op, r.Other = contract.RuleThreshold, contract.OpAbove, &contract.SeriesRef{Indicator: "ema_20"}
		}), "rules[0](rsi-cross).other"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, err := NewEngine(tc.rules, nil)
			if e != nil || !errors.Is(err, ErrInvalidRule) || !errors.Is(err, contract.ErrInvalid) {
				t.Fatalf("NewEngine = %v, %v; want nil and an error wrapping ErrInvalidRule and contract.ErrInvalid", e, err)
			}
			var fields contract.FieldErrors
			if !errors.As(err, &fields) {
				t.Fatalf("error %v carries no contract.FieldErrors", err)
			}
			found := false
			for _, f := range fields {
				found = found || f.Field == tc.wantField
			}
			if !found {
				t.Errorf("error %v does not name %s", err, tc.wantField)
			}
		})
	}
	t.Run("a nil clock means time.Now", func(t *testing.T) {
		e, err := NewEngine([]contract.Rule{valid}, nil)
		if err != nil {
			t.Fatalf("NewEngine: %v", err)
		}
		u := updateFor(valid, step{a: 69})
		u.Start = contract.TF1h.BarStart(time.Now()).Add(-time.Hour).Unix()
		if got := e.Evaluate(u); got != nil || e.Snapshot().Rules["rsi-cross"].Last.Start != u.Start {
			t.Errorf("a fresh bar by the real clock was not remembered: %+v", e.Snapshot())
		}
	})
}

func TestConcurrentLiveUpdatesFireOnce(t *testing.T) {
	live := rsiCross(contract.OpCrossesAbove, 70)
	live.Evaluate = contract.OnLive
	e, c := newTestEngine(t, live)
	play(t, e, c, live, []step{{bar: 0, a: 69}})
	u := updateFor(live, step{bar: 1, live: true, a: 71})
	c.now = evalTime(u, 0)
	var mu sync.Mutex
	var fired []contract.Alert
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 50 {
				v := u
				v.Version = int64(w*100 + i + 1)
				got := e.Evaluate(v)
				_ = e.Snapshot()
				mu.Lock()
				fired = append(fired, got...)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(fired) != 1 {
		t.Errorf("400 live updates of one bar fired %d alerts, want 1", len(fired))
	}
}

func TestFormatNumber(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want string
	}{{70, "70"}, {71.3, "71.3"}, {-12.345, "-12.35"}, {100_000.126, "100000.13"}, {0, "0"}, {0.5, "0.5"},
		{0.00061234, "0.0006123"}, {-0.0001, "-0.0001"}, {-0.001, "-0.001"}, {-0.0000001, "-0.0000001"}, {math.Copysign(0, -1), "0"}} {
		t.Run(tc.want, func(t *testing.T) {
			if got := formatNumber(tc.in); got != tc.want {
				t.Errorf("formatNumber(%v) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
