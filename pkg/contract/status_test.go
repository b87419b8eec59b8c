package contract_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
)

// TestStatusRepliesRoundTrip: the status results of indicators, alerts and
// control keep their wire shape (ARCHITECTURE §9, docs/design.md) through
// an encode, a decode and another encode.
func TestStatusRepliesRoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 3, 1, 0, 0, 0, time.UTC)
	cases := []roundTrip{
		{"indicators", contract.IndicatorsStatus{Instance: "ID1", Name: "ind-1", Members: []string{"ID1"}, Partitions: []int{0, 1}, Series: 2, Warming: 1,
			Users: map[string]contract.IndicatorsUserStatus{"alice": {Mode: contract.ModePositionMonitor, Revision: 3, Series: 2, Warming: 1, LastCandle: &at, LagMs: 1.5}}},
			`{"instance":"ID1","name":"ind-1","members":["ID1"],"partitions":[0,1],"series":2,"warming":1,"users":{"alice":{"paused":false,"mode":"position-monitor","revision":3,"series":2,"warming":1,"last_candle":"2026-12-03T01:00:00Z","lag_ms":1.5}}}`,
			decodeAs[contract.IndicatorsStatus]},
		{"alerts", contract.AlertsStatus{Instance: "ID2", StartedAt: at, Members: []string{"ID2"}, Partitions: []int{5}, Consumer: &contract.ConsumerBacklog{Pending: 12, AckPending: 3},
			Users: map[string]contract.AlertsUserStatus{"alice": {Paused: true, Revision: 4, RulesLoaded: 2, Evaluations: 10, AlertsFired: 1, LastBar: &at}}},
			`{"instance":"ID2","started_at":"2026-12-03T01:00:00Z","members":["ID2"],"partitions":[5],"consumer":{"pending":12,"ack_pending":3},"users":{"alice":{"paused":true,"revision":4,"rules_loaded":2,"evaluations":10,"alerts_fired":1,"last_bar":"2026-12-03T01:00:00Z"}}}`,
			decodeAs[contract.AlertsStatus]},
		{"control", contract.ControlStatus{Instance: "ID3", StartedAt: at, Members: []string{"ID3"},
			Users:       map[string]contract.ControlUserStatus{"alice": {QueueDepth: contract.QueueDepth{Queued: 2, Running: "op-1", Executor: "ID3", Jobs: 1}, Owner: "ID3"}},
			RunningHere: map[string][]string{"alice": {"op-1"}}},
			`{"instance":"ID3","started_at":"2026-12-03T01:00:00Z","members":["ID3"],"users":{"alice":{"queued":2,"running":"op-1","executor":"ID3","jobs":1,"owner":"ID3"}},"running_here":{"alice":["op-1"]}}`,
			decodeAs[contract.ControlStatus]},
	}
	checkRoundTrips(t, cases)
}

// An alerts instance's status says how far its consumer is behind.
func ExampleConsumerBacklog_Total() {
	var st contract.AlertsStatus
	_ = json.Unmarshal([]byte(`{"instance":"ID2","consumer":{"pending":12,"ack_pending":3},"users":{}}`), &st)
	fmt.Println(st.Consumer.Total(), "updates behind")
	// Output: 15 updates behind
}
