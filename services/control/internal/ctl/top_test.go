package ctl

import (
	"bytes"
	"encoding/json"
	"regexp"
	"testing"
	"time"
)

func TestOwnershipCountsOwnedUsersAndTheLargestLag(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status string
		users  int
		lagMs  int64
	}{
		{"feed", `{"users":{"a":{"owner":true,"freshness":{"BTC-USD":{"lag_ms":120},"ETH-USD":{"lag_ms":900}}},"b":{"owner":false,"freshness":{"BTC-USD":{"lag_ms":99999}}}}}`, 1, 900},
		{"indicators", `{"users":{"a":{"lag_ms":4.6},"b":{"lag_ms":12.2}}}`, 2, 12},
		{"alerts without lag", `{"users":{"a":{},"b":{},"c":{}}}`, 3, -1},
		{"no users", `{"users":{}}`, 0, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st serviceStatus
			if err := json.Unmarshal([]byte(tc.status), &st); err != nil {
				t.Fatal(err)
			}
			if o := ownershipOf(st); o.users != tc.users || o.lagMs != tc.lagMs {
				t.Errorf("ownership %+v, want %d users, lag %d ms", o, tc.users, tc.lagMs)
			}
		})
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
			{InstanceStatus: InstanceStatus{Service: "vigil-feed", Instance: "feed-1", Host: "h1", Started: at.Add(-90 * time.Second)}, Users: 2, LagMs: 1500},
			{InstanceStatus: InstanceStatus{Service: "vigil-control", Instance: "control-1", Host: "h1"}, Users: -1, LagMs: -1},
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
		`(?m)^vigil-control\s+control-1\s+h1\s+-\s+-\s+-$`,
	} {
		if !regexp.MustCompile(want).Match(out.Bytes()) {
			t.Errorf("output does not match %s\n%s", want, out.String())
		}
	}
}
