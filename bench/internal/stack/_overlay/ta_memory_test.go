// This file is added to services/indicators/internal/ta by the benchmark
// runner (go test -overlay) to measure figure 7: the heap a Series of each
// mode's default indicators holds, as vigil-indicators creates it (the
// catalog's plan, the default replay depth), after it has seen more bars
// than its rings hold. The service's own code is unchanged.

package ta_test

import (
	"math"
	"runtime"
	"testing"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/indicators/internal/catalog"
	"vigil.dev/services/indicators/internal/ta"
)

// BenchmarkSeriesMemory reports B/series: the runtime.MemStats HeapAlloc
// delta of memorySeries live series, divided by their number.
func BenchmarkSeriesMemory(b *testing.B) {
	const memorySeries = 200
	candles := make([]ta.Candle, ta.DefaultReplayDepth+200)
	price := 50_000.0
	for i := range candles {
		next := price * (1 + 0.004*math.Sin(float64(i)/7))
		candles[i] = ta.Candle{Start: int64(i) * 3600, Open: price, High: math.Max(price, next) * 1.001,
			Low: math.Min(price, next) * 0.999, Close: next, Volume: 10}
		price = next
	}
	for _, mode := range []contract.Mode{contract.ModePositionMonitor, contract.ModeScalperMACDV} {
		plan, err := catalog.For(mode, contract.IndicatorParams{})
		if err != nil {
			b.Fatalf("catalog.For(%s): %v", mode, err)
		}
		b.Run(string(mode), func(b *testing.B) {
			var perSeries float64
			for b.Loop() {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				series := make([]*ta.Series, memorySeries)
				for i := range series {
					s, err := ta.NewSeries(plan.Candle, ta.WithReplayDepth(ta.DefaultReplayDepth))
					if err != nil {
						b.Fatalf("NewSeries: %v", err)
					}
					if _, err := s.Rebuild(candles); err != nil {
						b.Fatalf("Rebuild: %v", err)
					}
					series[i] = s
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perSeries = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / memorySeries
				runtime.KeepAlive(series)
			}
			b.ReportMetric(perSeries, "B/series")
			b.ReportMetric(float64(len(plan.Candle)), "indicators")
		})
	}
}
