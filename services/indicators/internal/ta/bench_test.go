package ta

import (
	"testing"

	talib "github.com/markcheno/go-talib"
)

// benchWindow is the number of candles a recomputing implementation would
// run TA-Lib over on each update.
const benchWindow = 1000

// benchSpecs are the indicators of vigil's modes.
var benchSpecs = []Spec{
	SMA(50), EMA(20), RSI(14), ATR(14), BBands(20, 2), MACD(12, 26, 9), MACDV(12, 26, 9),
}

// BenchmarkUpdate measures Apply of one closed candle to a warm Series of
// one indicator ("all": every indicator of benchSpecs in one Series).
func BenchmarkUpdate(b *testing.B) {
	candles := btcCandles(b)
	run := func(b *testing.B, specs []Spec, closed bool) {
		s, err := NewSeries(specs)
		if err != nil {
			b.Fatalf("NewSeries: %v", err)
		}
		if _, err := s.Rebuild(candles[:benchWindow]); err != nil {
			b.Fatalf("Rebuild: %v", err)
		}
		start := candles[benchWindow-1].Start
		i := benchWindow
		b.ReportAllocs()
		for b.Loop() {
			c := candles[i%len(candles)]
			if closed {
				start += 3600
			}
			c.Start = start + 3600
			if _, err := s.Apply(c, closed); err != nil {
				b.Fatalf("Apply: %v", err)
			}
			i++
		}
	}
	for _, spec := range benchSpecs {
		b.Run(spec.Name, func(b *testing.B) { run(b, []Spec{spec}, true) })
	}
	b.Run("all", func(b *testing.B) { run(b, benchSpecs, true) })
	b.Run("all_in_progress", func(b *testing.B) { run(b, benchSpecs, false) })
}

// BenchmarkTalibRecompute measures go-talib over the last benchWindow
// candles, the cost of computing one update without incremental state.
func BenchmarkTalibRecompute(b *testing.B) {
	candles := btcCandles(b)[:benchWindow]
	high, low, closes := make([]float64, benchWindow), make([]float64, benchWindow), make([]float64, benchWindow)
	for i, c := range candles {
		high[i], low[i], closes[i] = c.High, c.Low, c.Close
	}
	recompute := func(s Spec) {
		switch s.Kind {
		case KindSMA:
			talib.Sma(closes, s.Period)
		case KindEMA:
			talib.Ema(closes, s.Period)
		case KindRSI:
			talib.Rsi(closes, s.Period)
		case KindATR:
			talib.Atr(high, low, closes, s.Period)
		case KindBBands:
			talib.BBands(closes, s.Period, s.StdDev, s.StdDev, talib.SMA)
		case KindMACD:
			talib.Macd(closes, s.Fast, s.Slow, s.Signal)
		case KindMACDV:
			fast, slow := talib.Ema(closes, s.Fast), talib.Ema(closes, s.Slow)
			atr := talib.Atr(high, low, closes, s.Slow)
			line := make([]float64, benchWindow-s.Slow)
			for i := range line {
				j := i + s.Slow
				line[i] = (fast[j] - slow[j]) / atr[j] * 100
			}
			talib.Ema(line, s.Signal)
		}
	}
	for _, spec := range benchSpecs {
		b.Run(spec.Name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				recompute(spec)
			}
		})
	}
	b.Run("all", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, spec := range benchSpecs {
				recompute(spec)
			}
		}
	})
}

// BenchmarkBook measures a level update near the top of a 2000-level book
// followed by the metrics within 25 bps.
func BenchmarkBook(b *testing.B) {
	var book Book
	levels := make([]Level, 0, 2000)
	for i := range 1000 {
		levels = append(levels, Level{Bid, 50_000 - float64(i)*0.5, 1}, Level{Offer, 50_000.5 + float64(i)*0.5, 1})
	}
	if err := book.Snapshot(levels); err != nil {
		b.Fatalf("Snapshot: %v", err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		price := 50_000 - float64(i%20)*0.5
		if err := book.Update(Level{Bid, price, float64(i % 3)}); err != nil {
			b.Fatalf("Update: %v", err)
		}
		if _, err := book.Metrics(25); err != nil {
			b.Fatalf("Metrics: %v", err)
		}
		i++
	}
}
