package rules

import (
	"fmt"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
)

// BenchmarkEvaluate measures one closed update against the largest rule set
// the contract allows by default, every rule on the updated series.
func BenchmarkEvaluate(b *testing.B) {
	rules := make([]contract.Rule, contract.DefaultLimits.MaxRules)
	for i := range rules {
		switch i % 3 {
		case 0:
			rules[i] = rsiCross(contract.OpCrossesAbove, 50+float64(i%40))
		case 1:
			rules[i] = rsiThreshold(contract.OpBelow, 20+float64(i%40), time.Hour)
		default:
			rules[i] = emaCross(contract.OpCrossesBelow)
		}
		rules[i].ID = fmt.Sprintf("r%d", i)
	}
	c := &testClock{}
	e, err := NewEngine(rules, c.Now)
	if err != nil {
		b.Fatal(err)
	}
	fired := 0
	for i := 0; b.Loop(); i++ {
		u := updateFor(rules[0], step{bar: i, a: float64(30 + i%50)})
		u.Values["ema_20"] = contract.Fields{"value": float64(100 + i%7)}
		u.Values["ema_50"] = contract.Fields{"value": 103}
		c.now = evalTime(u, 0)
		fired += len(e.Evaluate(u))
	}
	b.ReportMetric(float64(fired)/float64(b.N), "alerts/op")
}
