package source_test

import (
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/source"
)

var hour = time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

func TestValidateRejectsMalformedData(t *testing.T) {
	good := source.Bar{Product: "BTC-USD", Timeframe: contract.TF1h, Start: hour, Open: 10, High: 12, Low: 9, Close: 11, Volume: 3}
	edit := func(f func(*source.Bar)) source.Bar { b := good; f(&b); return b }
	for _, tc := range []struct {
		name string
		bar  source.Bar
		ok   bool
	}{
		{"good", good, true},
		{"zero volume", edit(func(b *source.Bar) { b.Volume = 0 }), true},
		{"NaN", edit(func(b *source.Bar) { b.Close = math.NaN() }), false},
		{"infinite", edit(func(b *source.Bar) { b.High = math.Inf(1) }), false},
		{"negative", edit(func(b *source.Bar) { b.Volume = -1 }), false},
		{"high below low", edit(func(b *source.Bar) { b.High, b.Low = 9, 12 }), false},
		{"open above high", edit(func(b *source.Bar) { b.Open = 13 }), false},
		{"close below low", edit(func(b *source.Bar) { b.Close = 8 }), false},
		{"bad product", edit(func(b *source.Bar) { b.Product = "btc-usd*" }), false},
		{"unaligned", edit(func(b *source.Bar) { b.Start = hour.Add(time.Minute) }), false},
		{"bad timeframe", edit(func(b *source.Bar) { b.Timeframe = "2h" }), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.bar.Validate()
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, source.ErrMalformed)) {
				t.Errorf("Validate() = %v, want ok %v (errors wrap ErrMalformed)", err, tc.ok)
			}
		})
	}
	for _, tc := range []struct {
		name  string
		trade source.Trade
		ok    bool
	}{
		{"good", source.Trade{Product: "ETH-USD", Price: 1, Size: 0, Time: hour}, true},
		{"zero price", source.Trade{Product: "ETH-USD", Price: 0, Size: 1, Time: hour}, false},
		{"negative size", source.Trade{Product: "ETH-USD", Price: 1, Size: -1, Time: hour}, false},
		{"no time", source.Trade{Product: "ETH-USD", Price: 1, Size: 1}, false},
		{"bad product", source.Trade{Product: "ETH", Price: 1, Size: 1, Time: hour}, false},
	} {
		t.Run("trade "+tc.name, func(t *testing.T) {
			if err := tc.trade.Validate(); (err == nil) != tc.ok {
				t.Errorf("Validate() = %v, want ok %v", err, tc.ok)
			}
		})
	}
	bad := source.BookUpdate{Product: "ETH-USD", Bids: []source.Level{{Price: 1, Quantity: 1}}, Asks: []source.Level{{Price: math.NaN(), Quantity: 1}}}
	if err := bad.Validate(); !errors.Is(err, source.ErrMalformed) {
		t.Errorf("book with a NaN price: %v", err)
	}
}

func TestAggregate(t *testing.T) {
	b := func(min int, o, h, l, c, v float64) source.Bar {
		return source.Bar{Product: "BTC-USD", Timeframe: contract.TF5m, Start: hour.Add(time.Duration(min) * time.Minute), Open: o, High: h, Low: l, Close: c, Volume: v}
	}
	// Out of order on purpose; 10:15 and 10:20 fall in the next 15m bar.
	got := source.Aggregate("BTC-USD", contract.TF15m, []source.Bar{b(10, 3, 5, 2, 4, 1), b(0, 1, 2, 0.5, 1.5, 2), b(15, 4, 4, 3, 3.5, 1), b(5, 1.5, 3, 1, 3, 4), b(20, 3.5, 6, 3, 5, 2)})
	want := []source.Bar{
		{Product: "BTC-USD", Timeframe: contract.TF15m, Start: hour, Open: 1, High: 5, Low: 0.5, Close: 4, Volume: 7},
		{Product: "BTC-USD", Timeframe: contract.TF15m, Start: hour.Add(15 * time.Minute), Open: 4, High: 6, Low: 3, Close: 5, Volume: 3},
	}
	if !slices.Equal(got, want) {
		t.Errorf("Aggregate = %+v, want %+v", got, want)
	}
}

func TestCapsAggregated(t *testing.T) {
	coinbase := source.Caps{TradeTimeframes: []contract.Timeframe{contract.TF1m}, CandleTimeframe: contract.TF5m, Timeframes: contract.Timeframes}
	if got := coinbase.Aggregated(); !slices.Equal(got, []contract.Timeframe{contract.TF15m, contract.TF1h, contract.TF4h, contract.TF1d}) {
		t.Errorf("coinbase aggregates %v", got)
	}
	sim := source.Caps{TradeTimeframes: contract.Timeframes, Timeframes: contract.Timeframes}
	if got := sim.Aggregated(); len(got) != 0 {
		t.Errorf("sim aggregates %v, want none (trades build every timeframe)", got)
	}
}
