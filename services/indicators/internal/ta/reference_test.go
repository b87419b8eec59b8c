package ta

import (
	"math"
	"slices"
	"testing"

	"vigil.dev/pkg/testenv"
)

// referenceSpecs are the indicators of shared/data/btcusd_1h.talib.csv and
// btcusd_1h.talib-params.csv, named as the reference names them.
var referenceSpecs = []Spec{
	SMA(20), EMA(12), EMA(26), RSI(14), ATR(14), ATR(26), MACD(12, 26, 9), BBands(20, 2), MACDV(12, 26, 9),
	MACD(5, 35, 5), EMA(9), SMA(10), RSI(7), BBands(10, 2.5),
}

// field is the output of f named as the contract names it.
func field(f Fields, name string) float64 {
	switch name {
	case "value":
		return f.Value
	case "macd":
		return f.MACD
	case "signal":
		return f.Signal
	case "hist":
		return f.Hist
	case "upper":
		return f.Upper
	case "middle":
		return f.Middle
	case "lower":
		return f.Lower
	}
	return math.NaN()
}

// relErr is |got-want| relative to want, or absolute when |want| < 1 (a
// MACD histogram crosses zero).
func relErr(got, want float64) float64 {
	return math.Abs(got-want) / math.Max(1, math.Abs(want))
}

// TestSeriesMatchesCTalib feeds every bar of the reference data and checks
// every column of C TA-Lib's reference files at every bar: an indicator is
// warm exactly where all its reference columns have a value (MACD-V's line
// has one from bar Slow, but vigil publishes it with its signal).
func TestSeriesMatchesCTalib(t *testing.T) {
	ref := testenv.Talib(t)
	candles := btcCandles(t)
	if len(candles) != len(ref.Starts) {
		t.Fatalf("%d candles, %d reference rows", len(candles), len(ref.Starts))
	}
	var names []string
	for _, s := range referenceSpecs {
		names = append(names, s.Name)
	}
	for name := range ref.Values {
		if !slices.Contains(names, name) {
			t.Fatalf("reference column %s is not checked", name)
		}
	}
	got := feedClosed(t, referenceSpecs, candles)
	for j, spec := range referenceSpecs {
		fields := ref.Values[spec.Name]
		if len(fields) == 0 {
			t.Fatalf("%s: not in the reference files", spec.Name)
		}
		worst, first := 0.0, -1
		for i := range candles {
			v := got[i][j]
			published := true
			for _, want := range fields {
				published = published && !math.IsNaN(want[i])
			}
			if v.Warming == published {
				t.Fatalf("%s bar %d: warming %v, reference has all values %v", spec.Name, i, v.Warming, published)
			}
			if !published {
				continue
			}
			if first < 0 {
				first = i
			}
			for name, want := range fields {
				if e := relErr(field(v.Fields, name), want[i]); !(e <= relTolerance) {
					t.Fatalf("%s bar %d %s: %v, C TA-Lib %v (error %.3g)", spec.Name, i, name, field(v.Fields, name), want[i], e)
				} else {
					worst = max(worst, e)
				}
			}
		}
		t.Logf("%s: first value at bar %d, largest error %.3g over %d bars", spec.Name, first, worst, len(candles))
	}
}
