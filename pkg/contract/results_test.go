package contract_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"vigil.dev/pkg/contract"
)

// TestVerbResultsRoundTrip: the verb results of indicators and alerts keep
// their wire shape through an encode, a decode and another encode.
func TestVerbResultsRoundTrip(t *testing.T) {
	rules := 2
	owner := contract.OwnerReply{Owner: true}
	cases := []roundTrip{
		{"indicators series", contract.IndicatorsSeriesResult{OwnerReply: owner, Series: 3, Warming: 1},
			`{"owner":true,"series":3,"warming":1}`, decodeAs[contract.IndicatorsSeriesResult]},
		{"indicators series, none warming", contract.IndicatorsSeriesResult{OwnerReply: owner, Series: 3},
			`{"owner":true,"series":3}`, decodeAs[contract.IndicatorsSeriesResult]},
		{"indicators apply", contract.IndicatorsApplyResult{OwnerReply: owner, IndicatorsChange: contract.IndicatorsChange{Series: 4, Added: 1, Removed: 2, Recomputed: 1}},
			`{"owner":true,"series":4,"warming":0,"added":1,"removed":2,"recomputed":1}`, decodeAs[contract.IndicatorsApplyResult]},
		{"indicators recompute", contract.IndicatorsRecomputeResult{OwnerReply: owner, Bars: 300},
			`{"owner":true,"bars":300}`, decodeAs[contract.IndicatorsRecomputeResult]},
		{"alerts not owner", contract.AlertsVerbResult{}, `{"owner":false}`, decodeAs[contract.AlertsVerbResult]},
		{"alerts apply", contract.AlertsVerbResult{OwnerReply: owner, Status: contract.AlertsApplied, Mode: contract.ModePositionMonitor, Revision: 2, Rules: &rules},
			`{"owner":true,"status":"applied","mode":"position-monitor","revision":2,"rules":2}`, decodeAs[contract.AlertsVerbResult]},
	}
	checkRoundTrips(t, cases)
}

// An alerts instance that does not own the user answers {"owner":false};
// its owner says what it did.
func ExampleAlertsVerbResult() {
	for _, reply := range []string{`{"owner":false}`, `{"owner":true,"status":"already_paused"}`} {
		var r contract.AlertsVerbResult
		_ = json.Unmarshal([]byte(reply), &r)
		fmt.Println(r.Owner, r.Status == contract.AlertsAlreadyPaused)
	}
	// Output:
	// false false
	// true true
}
