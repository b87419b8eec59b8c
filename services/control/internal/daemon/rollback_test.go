package daemon_test

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/desired"
	"vigil.dev/services/control/internal/testpeer"
)

// TestAllOrNothing makes one instance refuse (or not answer) the new
// revision of a reload-settings and of a switch-mode (ARCHITECTURE.md §6): the command
// fails with rolled_back true, the desired state is the previous one
// again, every instance that had applied the new revision is back on the
// previous one, and the compensation steps are in the result and, as
// spans, in the command's trace. When an instance that moved also refuses
// the previous revision, or dies, the result says which instance is on
// which revision.
func TestAllOrNothing(t *testing.T) {
	e := newEnv(t, 3)
	e.startControl("c1", testSettings(), 0)
	newSettings := `{"mode":"position-monitor","symbols":["BTC-USD","SOL-USD"],"indicators":{"rsi":21}}`

	t.Run("reload-settings refused by an indicators instance", func(t *testing.T) {
		before := e.seedState(t, "carol")
		e.setSettings(t, "carol", newSettings)
		broken := e.peers[contract.SvcIndicators][1]
		broken.FailRevision(contract.VerbApply, "carol", before.State.Revision+1)
		ack := e.accept("carol", "reload-settings", "")
		r := e.result("carol", ack.ID)
		rb := e.checkRolledBack(t, r, before, broken, contract.CodeInternal, true)
		checkSteps(t, r.Steps, []string{"feed.apply", "indicators.apply", "indicators.apply", "feed.apply"}, 2)
		if len(rb.Instances) != 6 {
			t.Errorf("instances %+v, want the 3 of feed and of indicators", rb.Instances)
		}
		for _, in := range rb.Instances {
			if in.Revision != before.State.Revision {
				t.Errorf("%s %s on revision %d, want %d", in.Service, in.Instance, in.Revision, before.State.Revision)
			}
		}
		e.checkApplied(t, "carol", before.State.Revision, nil)
		e.checkRollbackSpans(t, r)
	})

	t.Run("switch-mode refused by an alerts instance", func(t *testing.T) {
		before := e.seedState(t, "dave")
		broken := e.peers[contract.SvcAlerts][2]
		broken.FailRevision(contract.VerbApply, "dave", before.State.Revision+1)
		ack := e.accept("dave", "switch-mode", `{"mode":"scalper-macdv"}`)
		r := e.result("dave", ack.ID)
		e.checkRolledBack(t, r, before, broken, contract.CodeInternal, true)
		checkSteps(t, r.Steps, []string{"alerts.pause", "feed.apply", "indicators.apply", "alerts.apply",
			"alerts.apply", "indicators.apply", "feed.apply", "alerts.resume"}, 4)
		if st := e.state("dave").State; st.Mode != contract.ModePositionMonitor || st.Settings.Mode != contract.ModePositionMonitor {
			t.Errorf("mode %s (settings %s) after the rollback, want %s", st.Mode, st.Settings.Mode, contract.ModePositionMonitor)
		}
		e.checkApplied(t, "dave", before.State.Revision, nil)
		e.checkRollbackSpans(t, r)
	})

	t.Run("rollback incomplete", func(t *testing.T) {
		before := e.seedState(t, "erin")
		e.setSettings(t, "erin", newSettings)
		broken := e.peers[contract.SvcIndicators][1]
		broken.FailRevision(contract.VerbApply, "erin", before.State.Revision+1)
		stuck := e.peers[contract.SvcFeed][2]
		stuck.FailRevision(contract.VerbApply, "erin", before.State.Revision)
		ack := e.accept("erin", "reload-settings", "")
		r := e.result("erin", ack.ID)
		rb := e.checkRolledBack(t, r, before, broken, contract.CodeInternal, false)
		// The restore the stuck instance refuses is sent once more.
		checkSteps(t, r.Steps, []string{"feed.apply", "indicators.apply", "indicators.apply", "feed.apply", "feed.apply"}, 2)
		if !strings.Contains(rb.Reason, "vigil-feed apply not confirmed by "+stuck.ID()+" (tried twice)") || !strings.Contains(r.Error.Message, "rollback incomplete") {
			t.Errorf("reason %q, error %q: want the stuck instance %s named", rb.Reason, r.Error.Message, stuck.ID())
		}
		want := map[string]int64{}
		for _, svc := range []contract.Svc{contract.SvcFeed, contract.SvcIndicators} {
			for _, p := range e.peers[svc] {
				want[svc.MicroName()+"/"+p.ID()] = before.State.Revision
			}
		}
		want["vigil-feed/"+stuck.ID()] = before.State.Revision + 1
		got := map[string]int64{}
		for _, in := range rb.Instances {
			got[in.Service+"/"+in.Instance] = in.Revision
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("instance revisions %v, want %v", got, want)
		}
		e.checkApplied(t, "erin", before.State.Revision, map[*testpeer.Peer]int64{stuck: before.State.Revision + 1})
	})

	t.Run("a refused restore is retried once", func(t *testing.T) {
		before := e.seedState(t, "hana")
		e.setSettings(t, "hana", newSettings)
		broken := e.peers[contract.SvcIndicators][1]
		broken.FailRevision(contract.VerbApply, "hana", before.State.Revision+1)
		flaky := e.peers[contract.SvcFeed][2]
		flaky.FailRevisionOnce(contract.VerbApply, "hana", before.State.Revision)
		ack := e.accept("hana", "reload-settings", "")
		r := e.result("hana", ack.ID)
		rb := e.checkRolledBack(t, r, before, broken, contract.CodeInternal, true)
		checkSteps(t, r.Steps, []string{"feed.apply", "indicators.apply", "indicators.apply", "feed.apply", "feed.apply"}, 2)
		for _, in := range rb.Instances {
			if in.Revision != before.State.Revision {
				t.Errorf("%s %s on revision %d, want %d", in.Service, in.Instance, in.Revision, before.State.Revision)
			}
		}
		e.checkApplied(t, "hana", before.State.Revision, nil)
	})

	t.Run("an instance times out", func(t *testing.T) {
		before := e.seedState(t, "frank")
		e.setSettings(t, "frank", newSettings)
		slow := e.peers[contract.SvcIndicators][2]
		slow.Set(contract.VerbApply, testpeer.Hang)
		t.Cleanup(slow.Release)
		ack := e.accept("frank", "reload-settings", "")
		r := e.result("frank", ack.ID)
		rb := e.checkRolledBack(t, r, before, slow, contract.CodeTimeout, true)
		checkSteps(t, r.Steps, []string{"feed.apply", "indicators.apply", "indicators.apply", "feed.apply"}, 2)
		for _, in := range rb.Instances {
			// The slow instance answered neither apply: its status, asked
			// after the rollback, says it is still on the old revision.
			if in.Revision != before.State.Revision || in.Probed != (in.Instance == slow.ID()) || in.Unreachable {
				t.Errorf("%+v, want revision %d, probed only for %s", in, before.State.Revision, slow.ID())
			}
		}
		// The slow instance takes both requests in order once it goes on:
		// it ends on the restored revision.
		slow.Release()
		testenv.WaitFor(t, waitTimeout, "the slow instance to apply the restored revision", func() bool {
			calls := 0
			for _, c := range e.callsOf(ack.ID, contract.VerbApply) {
				if c.Instance == slow.ID() {
					calls++
				}
			}
			return calls == 2 && slow.Applied("frank") == before.State.Revision
		})
	})

	// Last: the dead instance stays gone.
	t.Run("an instance that moved dies", func(t *testing.T) {
		before := e.seedState(t, "gina")
		e.setSettings(t, "gina", newSettings)
		slow := e.peers[contract.SvcIndicators][1]
		slow.Set(contract.VerbApply, testpeer.Hang)
		t.Cleanup(slow.Release)
		dying := e.peers[contract.SvcFeed][2]
		ack := e.accept("gina", "reload-settings", "")
		testenv.WaitFor(t, waitTimeout, "feed instance to apply the new revision", func() bool { return dying.Applied("gina") == before.State.Revision+1 })
		dying.Disappear()
		r := e.result("gina", ack.ID)
		rb := e.checkRolledBack(t, r, before, slow, contract.CodeTimeout, false)
		if !strings.Contains(rb.Reason, dying.ID()) {
			t.Errorf("reason %q does not name the dead instance %s", rb.Reason, dying.ID())
		}
		for _, in := range rb.Instances {
			want := before.State.Revision
			if in.Instance == dying.ID() {
				want++ // confirmed the new revision, then nothing
			}
			if in.Revision != want || in.Probed != (in.Instance == slow.ID()) {
				t.Errorf("%+v, want revision %d (probed only for %s)", in, want, slow.ID())
			}
		}
	})

	t.Run("a silent instance that is gone is reported unreachable", func(t *testing.T) {
		before := e.seedState(t, "ines")
		e.setSettings(t, "ines", newSettings)
		silent := e.peers[contract.SvcIndicators][2]
		silent.Set(contract.VerbApply, testpeer.Hang)
		ack := e.accept("ines", "reload-settings", "")
		testenv.WaitFor(t, waitTimeout, "the apply to reach the silent instance", func() bool {
			for _, c := range e.callsOf(ack.ID, contract.VerbApply) {
				if c.Instance == silent.ID() {
					return true
				}
			}
			return false
		})
		silent.Disappear()
		r := e.result("ines", ack.ID)
		// Rolled back: it never confirmed the new revision; it is reported
		// as unreachable, its revision unknown (it converges from
		// VIGIL_STATE when it comes back).
		rb := e.checkRolledBack(t, r, before, silent, contract.CodeTimeout, true)
		found := false
		for _, in := range rb.Instances {
			if in.Instance == silent.ID() {
				found = true
				if in.Revision != 0 || !in.Unreachable || in.Probed {
					t.Errorf("%+v, want revision 0 and unreachable", in)
				}
			} else if in.Unreachable {
				t.Errorf("%+v reported unreachable", in)
			}
		}
		if !found {
			t.Errorf("the silent instance %s is not among %+v", silent.ID(), rb.Instances)
		}
	})
}

// seedState gives token a desired state through a reload-settings that
// succeeds and returns it.
func (e *env) seedState(t *testing.T, token string) desired.Entry {
	t.Helper()
	e.addUser(token, validSettings)
	ack := e.accept(token, "reload-settings", "")
	if r := e.result(token, ack.ID); r.Status != contract.StatusSucceeded {
		t.Fatalf("seeding reload-settings of %s: %s %+v", token, r.Status, r.Error)
	}
	return e.state(token)
}

// setSettings stores users.settings of token.
func (e *env) setSettings(t *testing.T, token, settings string) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), `UPDATE users SET settings = $1 WHERE identity_sub = $2`, settings, token); err != nil {
		t.Fatal(err)
	}
}

// checkRolledBack checks a failed all-or-nothing command: the error names
// the broken instance with code, the result is a contract.Rollback from the revision
// after before's back to before's with rolledBack as given, and the desired
// state is before's again (written anew, so newer).
func (e *env) checkRolledBack(t *testing.T, r contract.Result, before desired.Entry, broken *testpeer.Peer, code contract.ErrorCode, rolledBack bool) contract.Rollback {
	t.Helper()
	if r.Status != contract.StatusFailed || r.Error == nil || r.Error.Code != code || !strings.Contains(r.Error.Message, broken.ID()) {
		t.Fatalf("status %s error %+v: want failed (%s) naming %s", r.Status, r.Error, code, broken.ID())
	}
	rb := decode[contract.Rollback](t, r.Result)
	prev := before.State.Revision
	if rb.RolledBack != rolledBack || !rb.Restored || rb.Revision != prev || rb.Attempted != prev+1 {
		t.Errorf("rollback %+v, want rolled_back %v restored, revision %d attempted %d", rb, rolledBack, prev, prev+1)
	}
	if rolledBack && (rb.Reason != "" || !strings.Contains(r.Error.Message, "rolled back")) {
		t.Errorf("reason %q error %q", rb.Reason, r.Error.Message)
	}
	after := e.state(r.User)
	a, b := after.State, before.State
	if a.Revision != b.Revision || a.Mode != b.Mode || a.Paused != b.Paused || !slices.Equal(a.Symbols, b.Symbols) ||
		a.UserID != b.UserID || a.ExchangeID != b.ExchangeID || !reflect.DeepEqual(a.Settings, b.Settings) {
		t.Errorf("desired state after the rollback\n %+v\nwant the previous\n %+v", a, b)
	}
	if after.KVRev <= before.KVRev || !a.UpdatedAt.After(b.UpdatedAt) || a.CommandID != r.ID {
		t.Errorf("KV revision %d (before %d), updated %v (before %v), by %q: want written again, last by %s",
			after.KVRev, before.KVRev, a.UpdatedAt, b.UpdatedAt, a.CommandID, r.ID)
	}
	if row := e.publishedRow(r.ID); row.Status != "failed" {
		t.Errorf("command_log row %+v", row)
	}
	return rb
}

// checkSteps checks the steps' names, that the first forward of them are
// not compensation steps and the rest are, and that every step lists an
// outcome per instance.
func checkSteps(t *testing.T, steps []contract.Step, names []string, forward int) {
	t.Helper()
	if got := stepNames(steps); !slices.Equal(got, names) {
		t.Fatalf("steps %v, want %v", got, names)
	}
	for i, s := range steps {
		if s.Compensation != (i >= forward) {
			t.Errorf("step %d (%s %s): compensation %v", i, s.Service, s.Verb, s.Compensation)
		}
		if len(s.Outcomes) != s.Instances || s.Instances != 3 {
			t.Errorf("step %d (%s %s): %d instances, outcomes %+v", i, s.Service, s.Verb, s.Instances, s.Outcomes)
		}
	}
}

// checkApplied checks the revision every peer last applied for token:
// want, or except's for the peers listed there.
func (e *env) checkApplied(t *testing.T, token string, want int64, except map[*testpeer.Peer]int64) {
	t.Helper()
	for _, peers := range e.peers {
		for _, p := range peers {
			w, ok := except[p]
			if !ok {
				w = want
			}
			if got := p.Applied(token); got != w {
				t.Errorf("%s %s applied revision %d of %s, want %d", p.Svc, p.ID(), got, token, w)
			}
		}
	}
}

// checkRollbackSpans checks that the command's trace has a rollback span
// whose children are the compensation steps' client spans.
func (e *env) checkRollbackSpans(t *testing.T, r contract.Result) {
	t.Helper()
	var rollback trace.SpanContext
	for _, sp := range spans.GetSpans() {
		if sp.SpanContext.TraceID().String() == r.TraceID && sp.Name == "vigil-control rollback" {
			rollback = sp.SpanContext
		}
	}
	if !rollback.IsValid() {
		t.Fatalf("trace %s has no rollback span", r.TraceID)
	}
	children := 0
	for _, sp := range spans.GetSpans() {
		if sp.Parent.SpanID() == rollback.SpanID() && sp.SpanKind == trace.SpanKindClient {
			children++
		}
	}
	compensating := 0
	for _, s := range r.Steps {
		if s.Compensation {
			compensating++
		}
	}
	if children != compensating {
		t.Errorf("rollback span has %d client spans, want one per compensation step (%d)", children, compensating)
	}
}
