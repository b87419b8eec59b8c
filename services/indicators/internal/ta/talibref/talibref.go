// Package talibref holds reference implementations of C TA-Lib functions
// that go-talib computes differently, built from go-talib's functions that
// agree with C TA-Lib. Tests of the ta package and of the service compare
// against them; nothing in the service imports this package.
package talibref

import talib "github.com/markcheno/go-talib"

// MACD is C TA-Lib 0.4.0's TA_MACD over closes, built from go-talib's EMA
// (which is C TA-Lib's): the fast EMA runs over the closes from bar
// slow-fast on, so its SMA seed covers the fast closes ending at bar
// slow-1, where the slow EMA's seed ends; the signal is the EMA of the MACD
// line from bar slow-1 on, seeded with the SMA of its first signal values.
// Entries before bar slow+signal-2 are zero.
func MACD(closes []float64, fast, slow, signal int) (macd, sig, hist []float64) {
	n := len(closes)
	macd, sig, hist = make([]float64, n), make([]float64, n), make([]float64, n)
	if n < slow {
		return macd, sig, hist
	}
	fastEMA, slowEMA := talib.Ema(closes[slow-fast:], fast), talib.Ema(closes, slow)
	line := make([]float64, n-(slow-1))
	for k := range line {
		line[k] = fastEMA[k+fast-1] - slowEMA[k+slow-1]
	}
	signalEMA := talib.Ema(line, signal)
	for k := signal - 1; k < len(line); k++ {
		i := k + slow - 1
		macd[i], sig[i], hist[i] = line[k], signalEMA[k], line[k]-signalEMA[k]
	}
	return macd, sig, hist
}
