package contract_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"vigil.dev/pkg/contract"
)

// TestPlanAnswers: each service's plan answer survives a round trip
// through JSON as the strict decoder reads it, and the not-owner answer
// {"owner":false} is a valid answer of every kind.
func TestPlanAnswers(t *testing.T) {
	answers := []any{
		contract.FeedApplyPlan{Owner: true, Subscribe: []string{"ETH-USD"}, Unsubscribe: []string{}, Level2On: []string{"ETH-USD"},
			Level2Off: []string{}, Symbols: []string{"BTC-USD", "ETH-USD"}, Paused: true},
		contract.IndicatorsPlan{Owner: true, Created: []string{"1:BTC-USD:1h"}, Recomputed: []string{}, Dropped: []string{},
			KeptPaused: []string{"1:ETH-USD:1h"}, Series: 2, Warning: "macdv_5_35_5: not enough history"},
		contract.AlertsApplyPlan{Owner: true, Mode: contract.ModeScalperMACDV, Revision: 4, Gain: true,
			Rules: &contract.RulesPlan{Added: []string{"r1"}, Changed: []string{}, Removed: []string{"r0"}}},
		contract.FeedBackfillPlan{OwnerReply: contract.OwnerReply{Owner: true}, Pages: 2, Requests: 2, RatePerSecond: 10, EstimatedSeconds: 0.2,
			Ranges: []contract.FeedPlanRange{}},
	}
	for _, want := range answers {
		b, err := json.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		got := reflect.New(reflect.TypeOf(want))
		if err := json.Unmarshal(b, got.Interface()); err != nil {
			t.Fatalf("%T: %v", want, err)
		}
		if !reflect.DeepEqual(got.Elem().Interface(), want) {
			t.Errorf("%T round trip: %s gave %+v", want, b, got.Elem().Interface())
		}
	}
	notOwner := []byte(`{"owner":false}`)
	if p, err := contract.DecodeStrict[contract.FeedApplyPlan](notOwner); err != nil || p.Owner {
		t.Errorf("feed: %+v %v", p, err)
	}
	if p, err := contract.DecodeStrict[contract.IndicatorsPlan](notOwner); err != nil || p.Owner {
		t.Errorf("indicators: %+v %v", p, err)
	}
	if p, err := contract.DecodeStrict[contract.AlertsApplyPlan](notOwner); err != nil || p.Owner {
		t.Errorf("alerts: %+v %v", p, err)
	}
	if _, err := contract.DecodeStrict[contract.AlertsApplyPlan]([]byte(`{"owner":true,"rule":{}}`)); err == nil {
		t.Error("alerts: an unknown member was accepted by the strict decoder")
	}
}
