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
	n       float64 // Period (Slow for MACD-V's ATR) as a float
	k       float64 // EMA smoothing of EMA, or of the fast EMA of MACD(-V)
	kSlow   float64 // smoothing of the slow EMA of MACD(-V)
	kSignal float64 // smoothing of the signal EMA of MACD(-V)
}

func newIndicator(s Spec, off int) indicator {
	ind := indicator{spec: s, off: off, n: float64(s.Period)}
	switch s.Kind {
	case KindEMA:
		ind.k = emaK(s.Period)
	case KindMACD, KindMACDV:
		ind.k, ind.kSlow, ind.kSignal = emaK(s.Fast), emaK(s.Slow), emaK(s.Signal)
		ind.n = float64(s.Slow)
	}
	return ind
}

func emaK(period int) float64 { return 2.0 / float64(period+1) }

// input is what the indicators read of bar i (0-based since the series
// start): its prices and, when i > 0, the close of bar i-1. The bar is
// pointed to, not copied: a closed bar is read where the history stores
// it.
type input struct {
	i         int
	bar       *pastBar
	prevClose float64
}

// step folds the bar of in into the state vector st and writes the bar's
// outputs to f; it returns false, leaving f alone, while the indicator
// warms up. Earlier bars are read from past, which must hold at least
// spec.window() bars before the bar.
func (ind *indicator) step(f *Fields, st []float64, past *history, in *input) bool {
	st = st[ind.off:]
	switch ind.spec.Kind {
	case KindSMA:
		return ind.smaStep(f, st, past, in)
	case KindEMA:
		return emaStep(&f.Value, &st[0], in.bar.close, in.i, ind.spec.Period, ind.k)
	case KindRSI:
		return ind.rsiStep(f, st, in)
	case KindATR:
		var tr float64
		if in.i > 0 {
			tr = trueRange(in.bar, in.prevClose)
		}
		return atrStep(&f.Value, &st[0], tr, in.i, ind.spec.Period, ind.n)
	case KindBBands:
		return ind.bbandsStep(f, st, past, in)
	case KindMACD:
		return ind.macdStep(f, st, in)
	case KindMACDV:
		return ind.macdvStep(f, st, in)
	}
	return false
}

// trailing is the close of bar j, the oldest bar of the window that ends
// with the bar of in.
func trailing(past *history, j int, in *input) float64 {
	if j == in.i {
		return in.bar.close
	}
	return past.at(j).close
}

// smaStep is TA-Lib's SMA: a running total that gains the new close and,
// after the output, loses the oldest close of the window.
func (ind *indicator) smaStep(f *Fields, st []float64, past *history, in *input) bool {
	n := ind.spec.Period
	st[0] += in.bar.close
	if in.i < n-1 {
		return false
	}
	f.Value = st[0] / ind.n
	st[0] -= trailing(past, in.i-n+1, in)
	return true
}

// emaStep folds x, the j-th input (0-based), into an EMA whose state *s is
// the running sum of the inputs during warm-up and the EMA afterwards,
// and writes the EMA to *out. It returns false, leaving *out alone, until
// j reaches period-1 (TA-Lib's EMA: an SMA seed, then x*k + (1-k)*EMA in
// TA-Lib's order of operations).
func emaStep(out, s *float64, x float64, j, period int, k float64) bool {
	switch {
	case j < period-1:
		*s += x
		return false
	case j == period-1:
		*s = (*s + x) / float64(period)
	default:
		*s = ((x - *s) * k) + *s
	}
	*out = *s
	return true
}

// rsiStep is TA-Lib's RSI; st holds the average gain and loss.
func (ind *indicator) rsiStep(f *Fields, st []float64, in *input) bool {
	i, n := in.i, ind.spec.Period
	if i == 0 {
		return false
	}
	gain, loss := &st[0], &st[1]
	diff := in.bar.close - in.prevClose
	if i > n {
		prev := ind.n - 1
		*loss *= prev
		*gain *= prev
	}
	if diff < 0 {
		*loss -= diff
	} else {
		*gain += diff
	}
	if i < n {
		return false
	}
	*loss /= ind.n
	*gain /= ind.n
	f.Value = 0
	if sum := *gain + *loss; !(-rsiZeroSum < sum && sum < rsiZeroSum) {
		f.Value = 100.0 * (*gain / sum)
	}
	return true
}

// trueRange is TA-Lib's TRANGE of bar c after a bar that closed at
// prevClose.
func trueRange(c *pastBar, prevClose float64) float64 {
	greatest := c.high - c.low
	if v := math.Abs(prevClose - c.high); v > greatest {
		greatest = v
	}
	if v := math.Abs(prevClose - c.low); v > greatest {
		greatest = v
	}
	return greatest
}

// atrStep folds the true range tr of bar i into TA-Lib's ATR, whose state
// *s is the sum of true ranges during warm-up and the ATR afterwards, and
// writes the ATR to *out. Bar 0 has no true range; the first ATR (bar n)
// is the mean of the true ranges of bars 1..n, then Wilder smoothing
// follows. For n = 1 the ATR is the true range. fn is float64(n).
func atrStep(out, s *float64, tr float64, i, n int, fn float64) bool {
	switch {
	case i == 0:
		return false
	case n == 1:
		*out = tr
		return true
	case i < n:
		*s += tr
		return false
	case i == n:
		*s = (*s + tr) / fn
	default:
		*s *= fn - 1.0
		*s += tr
		*s /= fn
	}
	*out = *s
	return true
}

// bbandsStep is TA-Lib's BBANDS with an SMA: running totals of closes and
// squared closes give the mean and population variance of the window.
func (ind *indicator) bbandsStep(f *Fields, st []float64, past *history, in *input) bool {
	n, x := ind.spec.Period, in.bar.close
	st[0] += x
	st[1] += x * x
	if in.i < n-1 {
		return false
	}
	mean := st[0] / ind.n
	meanSquares := st[1] / ind.n
	old := trailing(past, in.i-n+1, in)
	st[0] -= old
	st[1] -= old * old
	var stdDev float64
	if variance := meanSquares - mean*mean; !(variance < varianceMin) {
		stdDev = math.Sqrt(variance)
	}
	dev := stdDev * ind.spec.StdDev
	f.Upper, f.Middle, f.Lower = mean+dev, mean, mean-dev
	return true
}

// macdStep is C TA-Lib's MACD (TA_MACD, release 0.4.0); st holds the
// fast, slow and signal EMAs. Both EMAs start at bar Slow-1: the slow one
// seeded with the SMA of closes 0..Slow-1, the fast one with the SMA of the
// Fast closes ending at bar Slow-1 (earlier closes are not read). The
// signal EMA runs over the MACD line from bar Slow-1 on, seeded with the
// SMA of its first Signal values, so the first output is at bar
// Slow+Signal-2.
func (ind *indicator) macdStep(f *Fields, st []float64, in *input) bool {
	s := &ind.spec
	i, x := in.i, in.bar.close
	first := s.Slow - s.Fast // the first close of the fast EMA's seed
	if i < first {
		st[1] += x // the slow EMA's seed sum (emaStep's warm-up)
		return false
	}
	var fast, slow, signal float64
	emaStep(&fast, &st[0], x, i-first, s.Fast, ind.k)
	if !emaStep(&slow, &st[1], x, i, s.Slow, ind.kSlow) {
		return false
	}
	line := fast - slow
	if !emaStep(&signal, &st[2], line, i-(s.Slow-1), s.Signal, ind.kSignal) {
		return false
	}
	f.MACD, f.Signal, f.Hist = line, signal, line-signal
	return true
}

// macdvStep is MACD-V: st holds the fast EMA, slow EMA, ATR(Slow) and the
// signal EMA, which starts at the first MACD-V value (bar Slow).
func (ind *indicator) macdvStep(f *Fields, st []float64, in *input) bool {
	s := &ind.spec
	i, x := in.i, in.bar.close
	var fast, slow, atr, signal float64
	emaStep(&fast, &st[0], x, i, s.Fast, ind.k)
	emaStep(&slow, &st[1], x, i, s.Slow, ind.kSlow)
	var tr float64
	if i > 0 {
		tr = trueRange(in.bar, in.prevClose)
	}
	if !atrStep(&atr, &st[2], tr, i, s.Slow, ind.n) {
		return false
	}
	line := macdv(fast, slow, atr)
	if !emaStep(&signal, &st[3], line, i-s.Slow, s.Signal, ind.kSignal) {
		return false
	}
	f.MACD, f.Signal, f.Hist = line, signal, line-signal
	return true
}

// macdv is (fast - slow) / atr * 100, or 0 when the ATR is too small
// relative to the price to mean anything.
func macdv(fast, slow, atr float64) float64 {
	if atr <= flatATR*math.Max(math.Abs(fast), math.Abs(slow)) {
		return 0
	}
	return (fast - slow) / atr * 100
}
