package ctl

import (
	"bytes"
	"encoding/json"
	"regexp"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/membership"
)

func TestOwnershipCountsOwnedUsersAndTheLargestLag(t *testing.T) {
	for _, tc := range []struct {
		name   string
		svc    contract.Svc
		status string
		users  int
		lagMs  int64
		// pending is the alerts' consumer backlog (-1: none reported).
		pending int64
	}{
		{"feed", contract.SvcFeed, `{"users":{"a":{"owner":true,"freshness":{"BTC-USD":{"lag_ms":120},"ETH-USD":{"lag_ms":900}}},"b":{"owner":false,"freshness":{"BTC-USD":{"lag_ms":99999}}}}}`, 1, 900, -1},
		{"indicators", contract.SvcIndicators, `{"users":{"a":{"lag_ms":4.6,"last_candle":"2026-12-03T00:00:00Z"},"b":{"lag_ms":12.2,"last_candle":"2026-12-03T00:00:00Z"},"c":{}}}`, 3, 12, -1},
		{"alerts without lag", contract.SvcAlerts, `{"users":{"a":{},"b":{},"c":{}}}`, 3, -1, -1},
		{"alerts with its consumer", contract.SvcAlerts, `{"users":{"a":{}},"consumer":{"pending":12,"ack_pending":3}}`, 1, -1, 15},
		{"no users", contract.SvcIndicators, `{"users":{}}`, 0, -1, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, _, err := ownershipOf(tc.svc, []byte(tc.status))
			if err != nil {
				t.Fatal(err)
			}
			if o.users != tc.users || o.lagMs != tc.lagMs || o.pending != tc.pending {
				t.Errorf("ownership %+v, want %d users, lag %d ms, %d pending", o, tc.users, tc.lagMs, tc.pending)
			}
		})
	}
	if _, _, err := ownershipOf(contract.SvcAlerts, []byte(`{"users":[]}`)); err == nil {
		t.Error("a malformed alerts status was read")
	}
	o, clock, err := ownershipOf(contract.SvcFeed, []byte(`{"source":"sim","source_status":{"clock":"wall","sim_time":"2026-12-03T01:02:03Z"},"users":{}}`))
	if err != nil || clock == nil || clock.Source != "sim" || clock.Clock != "wall" || !clock.SimTime.Equal(time.Date(2026, 12, 3, 1, 2, 3, 0, time.UTC)) || o.users != 0 {
		t.Errorf("feed source clock %+v %+v %v", clock, o, err)
	}
}

// TestControlOwnershipCountsTheUsersItRuns: each control instance owns the
// users membership.Owner gives it among the members it reports; together
// they own every user once; a failed or foreign reply is skipped.
func TestControlOwnershipCountsTheUsersItRuns(t *testing.T) {
	users := []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace"}
	members := []string{"ID-A", "ID-B"}
	reply := func(id string) []byte {
		result, _ := json.Marshal(map[string]any{"instance": "control-x", "members": members})
		b, _ := json.Marshal(contract.SvcReply{Service: contract.ServiceControl, Instance: id, OK: true, Result: result})
		return b
	}
	total := 0
	for _, id := range members {
		got, o, ok := controlOwnership(reply(id), users)
		if !ok || got != id || o.lagMs != -1 || o.pending != -1 {
			t.Fatalf("controlOwnership(%s) = %q %+v %v", id, got, o, ok)
		}
		want := 0
		for _, u := range users {
			if membership.Owner(members, u) == id {
				want++
			}
		}
		if o.users != want {
			t.Errorf("%s owns %d users, want %d", id, o.users, want)
		}
		total += o.users
	}
	if total != len(users) {
		t.Errorf("the instances own %d users together, want %d", total, len(users))
	}
	failed, _ := json.Marshal(contract.SvcReply{Instance: "ID-A", OK: false})
	for _, bad := range [][]byte{failed, []byte("not json")} {
		if _, _, ok := controlOwnership(bad, users); ok {
			t.Errorf("controlOwnership(%s) ok", bad)
		}
	}
}

func TestAlertUser(t *testing.T) {
	for subject, want := range map[string]string{"vigil.alert.demo.rule-1": "demo", "vigil.alert.x": "", "vigil.result.demo.1": ""} {
		if got, _ := alertUser(subject); got != want {
			t.Errorf("alertUser(%q) = %q, want %q", subject, got, want)
		}
	}
}

func TestPrintTop(t *testing.T) {
	at := time.Date(2026, 12, 2, 11, 0, 0, 0, time.UTC)
	r := TopReport{
		StatusReport: StatusReport{Users: []UserStatus{
			{User: "demo", Mode: "scalper-macdv", Symbols: []string{"BTC-USD"}, Queue: &QueueStatus{}, LagMs: map[string]int64{"BTC-USD": 1500}},
			{User: "ops", Paused: true, Mode: "position-monitor", Symbols: []string{"ETH-USD"}},
		}},
		Instances: []TopInstance{
			{InstanceStatus: InstanceStatus{Service: "vigil-feed", Instance: "feed-1", Host: "h1", Started: at.Add(-90 * time.Second)}, Users: 2, LagMs: 1500, Pending: -1},
			{InstanceStatus: InstanceStatus{Service: "vigil-alerts", Instance: "alerts-1", Host: "h2"}, Users: 2, LagMs: -1, Pending: 7},
			{InstanceStatus: InstanceStatus{Service: "vigil-control", Instance: "control-1", Host: "h1"}, Users: 2, LagMs: -1, Pending: -1},
			{InstanceStatus: InstanceStatus{Service: "vigil-control", Instance: "control-2", Host: "h2"}, Users: -1, LagMs: -1, Pending: -1},
		},
		AlertsLastMinute: map[string]int{"demo": 3},
		Sources:          []SourceClock{{Instance: "feed-1", Source: "sim", Clock: "wall", SimTime: at}},
		At:               at,
	}
	var out bytes.Buffer
	printTop(&out, r)
	for _, want := range []string{
		`(?m)^market: simulator on the wall clock, sim time 2026-12-02T11:00:00Z \(feed-1\)$`,
		`(?m)^demo\s+running\s+scalper-macdv\s+idle\s+3\s+BTC-USD 1.5s$`,
		`(?m)^ops\s+paused\s+position-monitor\s+-\s+0\s+-$`,
		`(?m)^vigil-feed\s+feed-1\s+h1\s+1m30s\s+2\s+1.5s$`,
		`(?m)^vigil-indicators\s+\(no instance answers\)`,
		`(?m)^vigil-alerts\s+alerts-1\s+h2\s+-\s+2\s+7 pending$`,
		`(?m)^vigil-control\s+control-1\s+h1\s+-\s+2\s+-$`,
		`(?m)^vigil-control\s+control-2\s+h2\s+-\s+-\s+-$`,
	} {
		if !regexp.MustCompile(want).Match(out.Bytes()) {
			t.Errorf("output does not match %s\n%s", want, out.String())
		}
	}
}
