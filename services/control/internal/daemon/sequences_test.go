package daemon_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/testpeer"
)

// TestStepNeedsEveryInstance breaks one of three instances of a service in
// each way it can break: the command fails naming that instance, the steps
// after it never run, and the desired state was written first.
func TestStepNeedsEveryInstance(t *testing.T) {
	e := newEnv(t, 3)
	// Instances that stopped heartbeating stay expected for a while.
	e.startControl("c1", testSettings(), 30*time.Second)
	tests := []struct {
		name   string
		break_ func(t *testing.T) *testpeer.Peer
		code   contract.ErrorCode
		steps  []string
	}{
		{"answers an error", func(t *testing.T) *testpeer.Peer {
			p := e.peers[contract.SvcAlerts][2]
			p.Set(contract.VerbPause, testpeer.Fail)
			t.Cleanup(func() { p.Set(contract.VerbPause, testpeer.Answer) })
			return p
		}, contract.CodeInternal, []string{"alerts.pause"}},
		{"does not answer", func(t *testing.T) *testpeer.Peer {
			p := e.peers[contract.SvcFeed][1]
			p.Set(contract.VerbPause, testpeer.Hang)
			t.Cleanup(p.Release)
			return p
		}, contract.CodeTimeout, []string{"alerts.pause", "feed.pause"}},
		{"disappeared", func(t *testing.T) *testpeer.Peer {
			p := e.peers[contract.SvcIndicators][2]
			p.Disappear()
			return p
		}, contract.CodeTimeout, []string{"alerts.pause", "feed.pause", "indicators.pause"}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			token := []string{"carol", "dave", "erin"}[i]
			e.addUser(token, validSettings)
			broken := tc.break_(t)
			ack := e.accept(token, "pause", "")
			r := e.result(token, ack.ID)
			if r.Status != contract.StatusFailed || r.Error == nil || r.Error.Code != tc.code {
				t.Fatalf("status %s error %+v", r.Status, r.Error)
			}
			if !strings.Contains(r.Error.Message, broken.ID()) || !strings.Contains(r.Error.Message, broken.Svc.MicroName()+" pause") {
				t.Errorf("error %q does not name %s %s", r.Error.Message, broken.Svc.MicroName(), broken.ID())
			}
			if got := stepNames(r.Steps); !slices.Equal(got, tc.steps) {
				t.Fatalf("steps = %v, want %v", got, tc.steps)
			}
			last := r.Steps[len(r.Steps)-1]
			if last.Instances != 3 || last.Acked != 2 || !slices.Equal(last.Missing, []string{broken.ID()}) {
				t.Errorf("last step: instances %d acked %d missing %v, want 3 2 [%s]", last.Instances, last.Acked, last.Missing, broken.ID())
			}
			want := contract.InstanceFailed
			if tc.code == contract.CodeTimeout {
				want = contract.InstanceMissing
			}
			for _, o := range last.Outcomes {
				if o.Instance == broken.ID() && (o.Outcome != want || o.Error == nil || o.Error.Code != tc.code) {
					t.Errorf("outcome of %s: %+v %+v, want %s with code %s", broken.ID(), o, o.Error, want, tc.code)
				}
			}
			if len(last.Outcomes) != 3 {
				t.Errorf("last step's outcomes %+v, want one per instance", last.Outcomes)
			}
			for _, s := range r.Steps[:len(r.Steps)-1] {
				if s.Acked != 3 {
					t.Errorf("step %s.%s acked %d", s.Service, s.Verb, s.Acked)
				}
			}
			names, _ := callRuns(e, ack.ID)
			if !slices.Equal(names, tc.steps) {
				t.Errorf("services called %v, want only %v", names, tc.steps)
			}
			if st := e.state(token).State; !st.Paused || st.CommandID != ack.ID {
				t.Errorf("desired state paused %v by %q, want written by the failed pause", st.Paused, st.CommandID)
			}
			if row := e.publishedRow(ack.ID); row.Status != "failed" {
				t.Errorf("command_log row %+v", row)
			}
		})
	}
}

// TestPriority queues a clear-cache and a pause behind a clear-cache whose
// first step is held back: the pause runs before the earlier clear-cache,
// and the ACK positions count the commands that will run first.
func TestPriority(t *testing.T) {
	e := newEnv(t, 3)
	e.startControl("c1", testSettings(), 0)
	slow := e.peers[contract.SvcIndicators][1]
	slow.Set(contract.VerbForget, testpeer.Hang)
	t.Cleanup(slow.Release)
	first := e.accept("alice", "clear-cache", `{"scope":"all"}`)
	testenv.WaitFor(t, waitTimeout, "the first clear-cache to reach every indicators instance", func() bool {
		return len(e.callsOf(first.ID, contract.VerbForget)) == 3
	})
	queued := e.accept("alice", "clear-cache", `{"scope":"symbol","symbol":"BTC-USD"}`)
	pause := e.accept("alice", "pause", "")
	backfill := e.accept("alice", "force-backfill", `{"symbol":"BTC-USD","timeframes":["1d"]}`)
	for _, c := range []struct {
		name string
		ack  contract.Ack
		want int
	}{{"clear-cache", queued, 1}, {"pause", pause, 1}, {"force-backfill", backfill, 3}} {
		if c.ack.Position != c.want {
			t.Errorf("%s position = %d, want %d", c.name, c.ack.Position, c.want)
		}
	}
	slow.Release()
	for _, a := range []contract.Ack{first, queued, pause, backfill} {
		if r := e.result("alice", a.ID); r.Status != contract.StatusSucceeded {
			t.Errorf("%s %s: %s %+v", a.Command, a.ID, r.Status, r.Error)
		}
	}
	firstCall := func(id string) int {
		calls := e.rec.For(id)
		if len(calls) == 0 {
			t.Fatalf("no calls for %s", id)
		}
		return calls[0].Seq
	}
	if firstCall(pause.ID) > firstCall(queued.ID) {
		t.Error("the clear-cache queued before the pause ran first")
	}
	if firstCall(queued.ID) > firstCall(backfill.ID) {
		t.Error("the force-backfill ran before the clear-cache")
	}
	// command_log is projected from the audit records after the results.
	p, q := e.publishedRow(pause.ID), e.publishedRow(queued.ID)
	if p.Finished == nil || q.Started == nil || !p.Finished.Before(*q.Started) {
		t.Errorf("pause finished %v, queued clear-cache started %v: they overlapped or ran in the wrong order", p.Finished, q.Started)
	}
}

// TestBackfillBesideQueue runs a force-backfill whose feed step does not
// end: a pause still runs at once, and cancels the running backfill and the
// one queued behind it.
func TestBackfillBesideQueue(t *testing.T) {
	e := newEnv(t, 3)
	s := testSettings()
	s.MaxJobs = 1
	e.startControl("c1", s, 0)
	feed := e.peers[contract.SvcFeed][0] // the owner, which does the work
	feed.Set(contract.VerbBackfill, testpeer.Hang)
	t.Cleanup(feed.Release)
	running := e.accept("alice", "force-backfill", `{"symbol":"BTC-USD","timeframes":["1h","4h"]}`)
	testenv.WaitFor(t, waitTimeout, "the backfill to reach every feed instance", func() bool {
		return len(e.callsOf(running.ID, contract.VerbBackfill)) == 3
	})
	queued := e.accept("alice", "force-backfill", `{"symbol":"ETH-USD"}`)
	start := time.Now()
	pause := e.accept("alice", "pause", "")
	if pause.Position != 0 {
		t.Errorf("pause position = %d, want 0: jobs do not hold the queue", pause.Position)
	}
	rp := e.result("alice", pause.ID)
	if rp.Status != contract.StatusSucceeded {
		t.Fatalf("pause: %s %+v", rp.Status, rp.Error)
	}
	if took := time.Since(start); took > s.StepTimeout {
		t.Errorf("pause took %v behind a running backfill", took)
	}
	for _, id := range []string{running.ID, queued.ID} {
		r := e.result("alice", id)
		res := decode[map[string]any](t, r.Result)
		if r.Status != contract.StatusCancelled || res["cancelled_by"] != pause.ID || res["backfilled"] != false {
			t.Errorf("backfill %s: status %s result %v, want cancelled by %s", id, r.Status, res, pause.ID)
		}
	}
	if calls := e.rec.For(queued.ID); len(calls) != 0 {
		t.Errorf("the queued backfill reached the services: %+v", calls)
	}
	checkRecomputedOnly(t, e.callsOf(running.ID, contract.VerbRecompute), contract.TF1h)
	if len(e.progress("alice", running.ID)) == 0 {
		t.Error("no progress events for the backfill")
	}
}

// TestQueueBusy fills a user's queue: one more command is rejected busy and
// not recorded; the queued ones all run.
func TestQueueBusy(t *testing.T) {
	e := newEnv(t, 1)
	s := testSettings()
	s.QueueLimit = 2
	e.startControl("c1", s, 0)
	alerts := e.peers[contract.SvcAlerts][0]
	alerts.Set(contract.VerbPause, testpeer.Hang)
	t.Cleanup(alerts.Release)
	held := e.accept("alice", "pause", "")
	testenv.WaitFor(t, waitTimeout, "the pause to run", func() bool { return len(e.rec.For(held.ID)) > 0 })
	q1 := e.accept("alice", "reload-settings", "")
	q2 := e.accept("alice", "switch-mode", `{"mode":"scalper-macdv"}`)
	if q1.Position != 1 || q2.Position != 2 {
		t.Errorf("positions %d %d, want 1 2", q1.Position, q2.Position)
	}
	ack, hdr := e.send("alice", "reload-settings", "", nil)
	if ack.Accepted || ack.Error == nil || ack.Error.Code != contract.CodeBusy || hdr.Get("Nats-Service-Error-Code") != "429" {
		t.Fatalf("ack = %+v %+v", ack, ack.Error)
	}
	if other := e.accept("bob", "reload-settings", ""); other.Position != 0 {
		t.Errorf("bob's position = %d: queues are per user", other.Position)
	}
	// Pause and resume are never busy: accepted on the full queue, ahead
	// of everything queued, and only the newest of them waits.
	r1 := e.accept("alice", "resume", "")
	r2 := e.accept("alice", "resume", "")
	if r1.Position != 1 || r2.Position != 1 {
		t.Errorf("resume positions %d %d, want 1 1 (behind the running pause only)", r1.Position, r2.Position)
	}
	alerts.Release()
	for _, a := range []contract.Ack{held, r2, q1, q2} {
		if r := e.result("alice", a.ID); r.Status != contract.StatusSucceeded {
			t.Errorf("%s: %s %+v", a.Command, r.Status, r.Error)
		}
	}
	if r := e.result("alice", r1.ID); r.Status != contract.StatusCancelled || decode[map[string]any](t, r.Result)["superseded_by"] != r2.ID {
		t.Errorf("superseded resume: %s %s", r.Status, r.Result)
	}
	if resumed, first := e.publishedRow(r2.ID), e.publishedRow(q1.ID); !resumed.Finished.Before(*first.Started) {
		t.Errorf("the resume ended at %v, after the queued reload-settings started at %v", resumed.Finished, first.Started)
	}
	testenv.WaitFor(t, waitTimeout, "the audit rows of the 6 accepted commands", func() bool { return e.logCount() == 6 })
}
