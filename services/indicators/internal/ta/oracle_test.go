package ta

import (
	"math"
	"testing"

	talib "github.com/markcheno/go-talib"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/indicators/internal/ta/talibref"
)

// relTolerance is the largest accepted error against TA-Lib: relative, or
// absolute for values of magnitude below 1.
const relTolerance = 1e-9

func btcCandles(t testing.TB) []Candle {
	t.Helper()
	bars := testenv.BTCUSD1h(t)
	candles := make([]Candle, len(bars))
	for i, b := range bars {
		candles[i] = Candle{Start: b.Start, Open: b.Open, High: b.High, Low: b.Low, Close: b.Close, Volume: b.Volume}
	}
	return candles
}

// talibLookback is TA-Lib's lookback of s (from the TA_*_Lookback
// functions), written out independently of Spec.Lookback.
func talibLookback(s Spec) int {
	switch s.Kind {
	case KindSMA, KindEMA, KindBBands:
		return s.Period - 1
	case KindRSI, KindATR:
		return s.Period
	case KindMACD:
		return (s.Slow - 1) + (s.Signal - 1)
	case KindMACDV:
		// ATR(Slow) lookback, then EMA(Signal) lookback over MACD-V.
		return s.Slow + (s.Signal - 1)
	}
	return -1 // unknown kind: checkValue then fails on every bar
}

// oracle computes s over candles with go-talib's batch functions, which
// agree with C TA-Lib except for MACD (talibref.MACD is C TA-Lib's); entries before
// talibLookback(s) are zero. candles must be longer than the lookback.
func oracle(s Spec, candles []Candle) []Fields {
	n := len(candles)
	open, high, low, closes := make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n)
	for i, c := range candles {
		open[i], high[i], low[i], closes[i] = c.Open, c.High, c.Low, c.Close
	}
	out := make([]Fields, n)
	single := func(v []float64) {
		for i := talibLookback(s); i < n; i++ {
			out[i].Value = v[i]
		}
	}
	switch s.Kind {
	case KindSMA:
		single(talib.Sma(closes, s.Period))
	case KindEMA:
		single(talib.Ema(closes, s.Period))
	case KindRSI:
		single(talib.Rsi(closes, s.Period))
	case KindATR:
		single(talib.Atr(high, low, closes, s.Period))
	case KindBBands:
		upper, middle, lower := talib.BBands(closes, s.Period, s.StdDev, s.StdDev, talib.SMA)
		for i := talibLookback(s); i < n; i++ {
			out[i] = Fields{Upper: upper[i], Middle: middle[i], Lower: lower[i]}
		}
	case KindMACD:
		macd, signal, hist := talibref.MACD(closes, s.Fast, s.Slow, s.Signal)
		for i := talibLookback(s); i < n; i++ {
			out[i] = Fields{MACD: macd[i], Signal: signal[i], Hist: hist[i]}
		}
	case KindMACDV:
		fast, slow := talib.Ema(closes, s.Fast), talib.Ema(closes, s.Slow)
		atr := talib.Atr(high, low, closes, s.Slow)
		line := make([]float64, n-s.Slow)
		for i := range line {
			j := i + s.Slow
			line[i] = (fast[j] - slow[j]) / atr[j] * 100
		}
		signal := talib.Ema(line, s.Signal)
		for i := talibLookback(s); i < n; i++ {
			m, sig := line[i-s.Slow], signal[i-s.Slow]
			out[i] = Fields{MACD: m, Signal: sig, Hist: m - sig}
		}
	}
	return out
}

// fieldsDiff returns the largest scaled error between got and want over
// all fields, and the name of that field.
func fieldsDiff(got, want Fields) (float64, string) {
	pairs := [...]struct {
		name      string
		got, want float64
	}{
		{"value", got.Value, want.Value}, {"macd", got.MACD, want.MACD},
		{"signal", got.Signal, want.Signal}, {"hist", got.Hist, want.Hist},
		{"upper", got.Upper, want.Upper}, {"middle", got.Middle, want.Middle},
		{"lower", got.Lower, want.Lower},
	}
	worst, field := 0.0, ""
	for _, p := range pairs {
		scaled := math.Abs(p.got-p.want) / math.Max(1, math.Abs(p.want))
		if math.IsNaN(scaled) || scaled > worst {
			worst, field = scaled, p.name
			if math.IsNaN(scaled) {
				return math.Inf(1), p.name
			}
		}
	}
	return worst, field
}

// checkValue fails t unless v agrees with go-talib's want for bar i, and
// returns the scaled error.
func checkValue(t *testing.T, s Spec, i int, v Value, want Fields) float64 {
	t.Helper()
	if v.Name != s.Name || v.Kind != s.Kind {
		t.Fatalf("bar %d: value of %s (%s), want %s (%s)", i, v.Name, v.Kind, s.Name, s.Kind)
	}
	if lookback := talibLookback(s); v.Warming != (i < lookback) {
		t.Fatalf("%s bar %d: warming = %v, TA-Lib lookback is %d", s.Name, i, v.Warming, lookback)
	}
	if v.Warming {
		if v.Fields != (Fields{}) {
			t.Fatalf("%s bar %d: warming value has fields %+v", s.Name, i, v.Fields)
		}
		return 0
	}
	diff, field := fieldsDiff(v.Fields, want)
	if diff > relTolerance {
		t.Fatalf("%s bar %d: %s differs by %.3g (scaled): got %+v, go-talib %+v", s.Name, i, field, diff, v.Fields, want)
	}
	return diff
}

// testSpecs are the indicators checked against go-talib: the defaults of
// vigil's modes and edge parameters.
var testSpecs = []Spec{
	SMA(1), SMA(20), SMA(50), SMA(200), SMA(1000),
	EMA(1), EMA(9), EMA(20), EMA(200),
	RSI(2), RSI(14), RSI(100),
	ATR(1), ATR(14), ATR(26),
	BBands(1, 2), BBands(20, 1), BBands(20, 2), BBands(10, 2.5),
	MACD(12, 26, 9), MACD(1, 2, 1), MACD(2, 3, 2), MACD(5, 35, 5), MACD(3, 10, 16),
	MACDV(12, 26, 9), MACDV(1, 2, 1), MACDV(5, 35, 5),
}
