package daemon

import (
	"fmt"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/alerts/internal/monitor"
)

// priceRules are n threshold rules that all fire when BTC-USD closes
// above 100000.
func priceRules(n int) []contract.Rule {
	rules := make([]contract.Rule, n)
	for i := range rules {
		rules[i] = price100k
		rules[i].ID = fmt.Sprintf("price-%d", i)
	}
	return rules
}

// TestAlertsPerMinute runs alerts with VIGIL_ALERTS_PER_MINUTE=2: four
// rules of alice fire in one minute, two alerts are recorded and two are
// suppressed (vigil.alerts.suppressed, status alerts_suppressed, one log
// line naming the limit); bob's two in the same minute are recorded, his
// count is his own;
// in alice's next minute her alerts are recorded again.
func TestAlertsPerMinute(t *testing.T) {
	e := newEnv(t)
	e.cfg.AlertsPerMinute = 2
	alice, bob := userState("alice", 1, priceRules(4)...), userState("bob", 2, priceRules(2)...)
	e.putState(alice)
	e.putState(bob)
	in := e.start("a")
	// Each update is settled before the next moves the clock: the limit
	// counts per minute of that clock, and bob's first bar sets it an
	// hour back, which reset alice's count while her bar was still being
	// evaluated (three of her alerts recorded, seen once in CI).
	for _, st := range []contract.DesiredState{alice, bob} {
		e.closeBar(st, bar{i: 0, close: 99_000})
		e.settle()
		e.closeBar(st, bar{i: 1, close: 101_000})
		e.settle()
	}
	// Rules are evaluated in order: alice's first two are recorded.
	rs := priceRules(4)
	e.waitAlerts(id("alice", rs[0], 1), id("alice", rs[1], 1), id("bob", rs[0], 1), id("bob", rs[1], 1))
	count := func(user string) int {
		alerts, err := e.streamAlerts()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, a := range alerts {
			if a.User == user {
				n++
			}
		}
		return n
	}
	if n := count("alice"); n != 2 {
		t.Errorf("alice has %d alerts in the stream, want 2 (the limit)", n)
	}
	if n, err := e.counted.Sum("vigil.alerts.suppressed", attribute.String("limit", monitor.AlertsPerMinuteLimit)); err != nil || n != 2 {
		t.Errorf("vigil.alerts.suppressed = %d (%v), want 2", n, err)
	}
	if s := in.monitor.Status()["alice"]; s.AlertsSuppressed != 2 || s.AlertsFired != 2 {
		t.Errorf("alice's status: fired %d, suppressed %d; want 2 and 2", s.AlertsFired, s.AlertsSuppressed)
	}
	if s := in.monitor.Status()["bob"]; s.AlertsSuppressed != 0 || s.AlertsFired != 2 {
		t.Errorf("bob's status: fired %d, suppressed %d; want 2 and 0", s.AlertsFired, s.AlertsSuppressed)
	}
	if logged := strings.Count(e.log.String(), "alerts suppressed: "+monitor.AlertsPerMinuteLimit); logged != 1 {
		t.Errorf("the suppression is logged %d times, want once", logged)
	}
	// The next bars close hours later, in other minutes: below, then
	// above again.
	e.closeBar(alice, bar{i: 2, close: 99_000})
	e.settle()
	e.closeBar(alice, bar{i: 3, close: 101_000})
	e.settle()
	e.waitFor("alice's alerts of the next minute", func() (bool, error) { return count("alice") == 4, nil })
}
