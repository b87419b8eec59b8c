package ta

import "math"

// Fields are the outputs of one indicator for one bar. Which fields are set
// depends on the kind:
//
//   - SMA, EMA, RSI, ATR: Value.
//   - MACD, MACD-V: MACD (the MACD or MACD-V line), Signal, Hist.
//   - BBands: Upper, Middle, Lower.
type Fields struct {
	Value  float64
	MACD   float64
	Signal float64
	Hist   float64
	Upper  float64
	Middle float64
	Lower  float64
}

// Thresholds copied from TA-Lib, under which it treats a number as zero.
const (
	rsiZeroSum  = 1e-14 // RSI: gain+loss below this gives 0
	varianceMin = 1e-14 // STDDEV: a variance below this gives 0
)

// flatATR is the ATR, relative to the price, under which MACD-V treats the
// market as flat and reports 0 instead of dividing by (almost) zero.
const flatATR = 1e-12

// indicator is one configured indicator of a Series: its spec, where its
// state lives in the Series state vector, and precomputed constants.
//
// The arithmetic of every step repeats C TA-Lib's operations (release
// 0.4.0, default compatibility, unstable periods 0) in the same order, so
// that results agree to the last bit or nearly so.
type indicator struct {
	spec    Spec
	off     int     // first state slot
	k       float64 // EMA smoothing of EMA, or of the fast EMA of MACD(-V)
	kSlow   float64 // smoothing of the slow EMA of MACD(-V)
	kSignal float64 // smoothing of the signal EMA of MACD(-V)
}

func newIndicator(s Spec, off int) indicator {
	ind := indicator{spec: s, off: off}
	switch s.Kind {
	case KindEMA:
		ind.k = emaK(s.Period)
	case KindMACD, KindMACDV:
		ind.k, ind.kSlow, ind.kSignal = emaK(s.Fast), emaK(s.Slow), emaK(s.Signal)
	}
	return ind
}

func emaK(period int) float64 { return 2.0 / float64(period+1) }

// step folds bar i (0-based since the series start), whose prices are c,
// into the state vector st and returns the bar's output; ok is false while
// the indicator warms up. Earlier bars are read from past, which must hold
// at least spec.window() bars before i.
func (ind *indicator) step(st []float64, past *history, i int, c pastBar) (f Fields, ok bool) {
	s := &ind.spec
	st = st[ind.off : ind.off+s.stateLen()]
	switch s.Kind {
	case KindSMA:
		return smaStep(st, past, i, c.close, s.Period)
	case KindEMA:
		f.Value, ok = emaStep(&st[0], c.close, i, s.Period, ind.k)
		return f, ok
	case KindRSI:
		return rsiStep(st, past, i, c.close, s.Period)
	case KindATR:
		var tr float64
		if i > 0 {
			tr = trueRange(c, past.at(i-1).close)
		}
		f.Value, ok = atrStep(&st[0], tr, i, s.Period)
		return f, ok
	case KindBBands:
		return bbandsStep(st, past, i, c.close, s.Period, s.StdDev)
	case KindMACD:
		return ind.macdStep(st, i, c.close)
	case KindMACDV:
		return ind.macdvStep(st, past, i, c)
	}
	return f, false
}

// trailing is the close of bar j, the oldest bar of the window that ends
// with bar i whose close is x.
func trailing(past *history, j, i int, x float64) float64 {
	if j == i {
		return x
	}
	return past.at(j).close
}

// smaStep is go-talib's Sma: a running total that gains the new close and,
// after the output, loses the oldest close of the window.
func smaStep(st []float64, past *history, i int, x float64, n int) (f Fields, ok bool) {
	st[0] += x
	if i < n-1 {
		return f, false
	}
	f.Value = st[0] / float64(n)
	st[0] -= trailing(past, i-n+1, i, x)
	return f, true
}

// emaStep folds x, the j-th input (0-based), into an EMA whose state *s is
// the running sum of the inputs during warm-up and the EMA afterwards.
// It returns 0 and false until j reaches period-1 (go-talib's ema).
func emaStep(s *float64, x float64, j, period int, k float64) (float64, bool) {
	switch {
	case j < period-1:
		*s += x
		return 0, false
	case j == period-1:
		*s = (*s + x) / float64(period)
	default:
		*s = ((x - *s) * k) + *s
	}
	return *s, true
}

// rsiStep is go-talib's Rsi; st holds the average gain and loss.
func rsiStep(st []float64, past *history, i int, x float64, n int) (f Fields, ok bool) {
	if i == 0 {
		return f, false
	}
	gain, loss := &st[0], &st[1]
	diff := x - past.at(i-1).close
	periods := float64(n)
	if i > n {
		*loss *= float64(n - 1)
		*gain *= float64(n - 1)
	}
	if diff < 0 {
		*loss -= diff
	} else {
		*gain += diff
	}
	if i < n {
		return f, false
	}
	*loss /= periods
	*gain /= periods
	if sum := *gain + *loss; !(-rsiZeroSum < sum && sum < rsiZeroSum) {
		f.Value = 100.0 * (*gain / sum)
	}
	return f, true
}

// trueRange is TA-Lib's TRANGE of bar c after a bar that closed at
// prevClose.
func trueRange(c pastBar, prevClose float64) float64 {
	greatest := c.high - c.low
	if v := math.Abs(prevClose - c.high); v > greatest {
		greatest = v
	}
	if v := math.Abs(prevClose - c.low); v > greatest {
		greatest = v
	}
	return greatest
}

// atrStep folds the true range tr of bar i into go-talib's Atr, whose
// state *s is the sum of true ranges during warm-up and the ATR afterwards.
// Bar 0 has no true range; the first ATR (bar n) is the mean of the true
// ranges of bars 1..n, then Wilder smoothing follows. For n = 1 the ATR is
// the true range.
func atrStep(s *float64, tr float64, i, n int) (float64, bool) {
	switch {
	case i == 0:
		return 0, false
	case n == 1:
		return tr, true
	case i < n:
		*s += tr
		return 0, false
	case i == n:
		*s = (*s + tr) / float64(n)
	default:
		*s *= float64(n) - 1.0
		*s += tr
		*s /= float64(n)
	}
	return *s, true
}

// bbandsStep is go-talib's BBands with an SMA: running totals of closes and
// squared closes give the mean and population variance of the window.
func bbandsStep(st []float64, past *history, i int, x float64, n int, k float64) (f Fields, ok bool) {
	st[0] += x
	st[1] += x * x
	if i < n-1 {
		return f, false
	}
	mean := st[0] / float64(n)
	meanSquares := st[1] / float64(n)
	old := trailing(past, i-n+1, i, x)
	st[0] -= old
	st[1] -= old * old
	var stdDev float64
	if variance := meanSquares - mean*mean; !(variance < varianceMin) {
		stdDev = math.Sqrt(variance)
	}
	dev := stdDev * k
	f.Upper, f.Middle, f.Lower = mean+dev, mean, mean-dev
	return f, true
}

// macdStep is C TA-Lib's MACD (TA_MACD, release 0.4.0); st holds the
// fast, slow and signal EMAs. Both EMAs start at bar Slow-1: the slow one
// seeded with the SMA of closes 0..Slow-1, the fast one with the SMA of the
// Fast closes ending at bar Slow-1 (earlier closes are not read). The
// signal EMA runs over the MACD line from bar Slow-1 on, seeded with the
// SMA of its first Signal values, so the first output is at bar
// Slow+Signal-2.
func (ind *indicator) macdStep(st []float64, i int, x float64) (f Fields, ok bool) {
	s := &ind.spec
	first := s.Slow - s.Fast // the first close of the fast EMA's seed
	if i < first {
		emaStep(&st[1], x, i, s.Slow, ind.kSlow)
		return f, false
	}
	fast, _ := emaStep(&st[0], x, i-first, s.Fast, ind.k)
	slow, warm := emaStep(&st[1], x, i, s.Slow, ind.kSlow)
	if !warm {
		return f, false
	}
	line := fast - slow
	signal, ok := emaStep(&st[2], line, i-(s.Slow-1), s.Signal, ind.kSignal)
	if !ok {
		return f, false
	}
	f.MACD, f.Signal, f.Hist = line, signal, line-signal
	return f, true
}

// macdvStep is MACD-V: st holds the fast EMA, slow EMA, ATR(Slow) and the
// signal EMA, which starts at the first MACD-V value (bar Slow).
func (ind *indicator) macdvStep(st []float64, past *history, i int, c pastBar) (f Fields, ok bool) {
	s := &ind.spec
	fast, _ := emaStep(&st[0], c.close, i, s.Fast, ind.k)
	slow, _ := emaStep(&st[1], c.close, i, s.Slow, ind.kSlow)
	var tr float64
	if i > 0 {
		tr = trueRange(c, past.at(i-1).close)
	}
	atr, warm := atrStep(&st[2], tr, i, s.Slow)
	if !warm {
		return f, false
	}
	line := macdv(fast, slow, atr)
	signal, ok := emaStep(&st[3], line, i-s.Slow, s.Signal, ind.kSignal)
	if !ok {
		return f, false
	}
	f.MACD, f.Signal, f.Hist = line, signal, line-signal
	return f, true
}

// macdv is (fast - slow) / atr * 100, or 0 when the ATR is too small
// relative to the price to mean anything.
func macdv(fast, slow, atr float64) float64 {
	if atr <= flatATR*math.Max(math.Abs(fast), math.Abs(slow)) {
		return 0
	}
	return (fast - slow) / atr * 100
}
