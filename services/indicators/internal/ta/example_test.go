package ta_test

import (
	"fmt"

	"vigil.dev/services/indicators/internal/ta"
)

func ExampleSeries() {
	series, err := ta.NewSeries([]ta.Spec{ta.SMA(3), ta.RSI(2)})
	if err != nil {
		fmt.Println(err)
		return
	}
	closes := []float64{10, 11, 12, 11}
	for i, price := range closes {
		c := ta.Candle{Start: int64(i) * 60, Open: price, High: price, Low: price, Close: price}
		if _, err := series.Apply(c, true); err != nil {
			fmt.Println(err)
			return
		}
	}
	// The in-progress bar is evaluated without changing the series.
	values, err := series.Apply(ta.Candle{Start: 240, Open: 11, High: 14, Low: 11, Close: 14}, false)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, v := range values {
		fmt.Printf("%s closed=%v value=%.4f\n", v.Name, v.Closed, v.Fields.Value)
	}
	// A correction of bar 60 replays bars 60, 120 and 180.
	values, err = series.Apply(ta.Candle{Start: 60, Open: 10, High: 13, Low: 10, Close: 13}, true)
	fmt.Println(len(values), "values, error:", err)
	// Output:
	// sma_3 closed=false value=12.3333
	// rsi_2 closed=false value=87.5000
	// 6 values, error: <nil>
}

func ExampleBook() {
	var book ta.Book
	_ = book.Snapshot([]ta.Level{
		{Side: ta.Bid, Price: 99.9, Quantity: 3},
		{Side: ta.Bid, Price: 100, Quantity: 1},
		{Side: ta.Offer, Price: 100.1, Quantity: 2},
	})
	_ = book.Update(ta.Level{Side: ta.Offer, Price: 100.1, Quantity: 0.5})
	m, err := book.Metrics(20)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("spread %.2f bps, depth %.1f/%.1f, imbalance %.3f\n", m.SpreadBps, m.BidDepth, m.OfferDepth, m.Imbalance)
	// Output:
	// spread 10.00 bps, depth 4.0/0.5, imbalance 0.778
}
