package rules_test

import (
	"fmt"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/alerts/internal/rules"
)

// An RSI rule fires once when RSI crosses above 70 on a closed hourly bar.
// The first bar only establishes the previous value.
func ExampleEngine_Evaluate() {
	level := 70.0
	rule := contract.Rule{
		ID: "rsi-overbought", Symbol: "BTC-USD", Timeframe: contract.TF1h,
		Kind: contract.RuleCross, SeriesRef: contract.SeriesRef{Indicator: "rsi_14"},
		Op: contract.OpCrossesAbove, Value: &level,
	}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := start
	engine, err := rules.NewEngine([]contract.Rule{rule}, func() time.Time { return now })
	if err != nil {
		fmt.Println(err)
		return
	}
	for i, rsi := range []float64{68.4, 71.3, 72.0} {
		bar := start.Add(time.Duration(i) * time.Hour)
		now = bar.Add(time.Hour + time.Second) // just after the bar closed
		for _, a := range engine.Evaluate(contract.IndicatorUpdate{
			SeriesID: contract.SeriesID{User: "alice", UserID: 1, ExchangeID: 1, Symbol: "BTC-USD", Timeframe: contract.TF1h},
			Start:    bar.Unix(), Closed: true, Version: 1,
			Values: map[string]contract.Fields{"rsi_14": {"value": rsi}},
		}) {
			fmt.Println(a.ID, a.Message)
		}
	}
	// Output: alice.rsi-overbought.1767229200 BTC-USD 1h rsi_14 crossed above 70 (71.3)
}
