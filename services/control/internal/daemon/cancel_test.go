package daemon_test

import (
	"slices"
	"strings"
	"testing"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/testpeer"
)

// TestCancelQueued holds alice's queue with a running pause and fills it:
// a cancel is still accepted (never busy), ends a queued command at once
// (its result cancelled, naming the cancel) while the pause still runs,
// and the cancelled command never reaches the services. Cancelling the
// running sequence, an ended command or another tenant's command is
// refused, and the refusal never names the other tenant or its command.
func TestCancelQueued(t *testing.T) {
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
	if ack, _ := e.send("alice", "clear-cache", `{"scope":"all"}`, nil); ack.Accepted || ack.Error.Code != contract.CodeBusy {
		t.Fatalf("the queue is not full: %+v", ack)
	}

	c := e.accept("alice", "cancel", `{"id":"`+q1.ID+`"}`)
	if c.Position != 0 {
		t.Errorf("cancel position = %d, want 0", c.Position)
	}
	rc := e.result("alice", c.ID)
	if rc.Status != contract.StatusSucceeded || rc.Command != contract.CmdCancel {
		t.Fatalf("cancel: %s %+v", rc.Status, rc.Error)
	}
	if res := decode[map[string]any](t, rc.Result); res["cancelled"] != true || res["id"] != q1.ID {
		t.Errorf("cancel result = %s", rc.Result)
	}
	r1 := e.result("alice", q1.ID)
	if res := decode[map[string]any](t, r1.Result); r1.Status != contract.StatusCancelled || res["cancelled_by"] != c.ID {
		t.Errorf("cancelled command: %s %s", r1.Status, r1.Result)
	}
	if len(e.rec.For(held.ID)) != 1 {
		t.Fatal("the pause went on before the cancel was answered")
	}

	refusals := []struct {
		name, user, body string
		code             contract.ErrorCode
		says             string
	}{
		{"the running sequence", "alice", `{"id":"` + held.ID + `"}`, contract.CodeConflict, "is running a sequence and cannot be cancelled"},
		{"an ended command", "alice", `{"id":"` + q1.ID + `"}`, contract.CodeConflict, "has already ended"},
		{"an unknown id", "alice", `{"id":"no-such-command"}`, contract.CodeInvalidPayload, "is not a queued or running command of yours"},
		{"another tenant's command", "bob", `{"id":"` + q2.ID + `"}`, contract.CodeInvalidPayload, "is not a queued or running command of yours"},
	}
	for _, tc := range refusals {
		ack, hdr := e.send(tc.user, "cancel", tc.body, nil)
		if ack.Accepted || ack.Error == nil || ack.Error.Code != tc.code || !strings.Contains(ack.Error.Message, tc.says) {
			t.Errorf("cancel of %s: %+v %+v, want %s saying %q", tc.name, ack, ack.Error, tc.code, tc.says)
			continue
		}
		if tc.user == "bob" {
			for _, leak := range []string{"alice", string(q2.Command), "mode"} {
				if strings.Contains(ack.Error.Message, leak) || strings.Contains(hdr.Get("Nats-Service-Error"), leak) {
					t.Errorf("bob's refusal names %q: %s", leak, ack.Error.Message)
				}
			}
		}
	}

	alerts.Release()
	for _, a := range []contract.Ack{held, q2} {
		if r := e.result("alice", a.ID); r.Status != contract.StatusSucceeded {
			t.Errorf("%s: %s %+v", a.Command, r.Status, r.Error)
		}
	}
	if calls := e.rec.For(q1.ID); len(calls) != 0 {
		t.Errorf("the cancelled command reached the services: %+v", calls)
	}
	if row := e.publishedRow(c.ID); row.Status != string(contract.StatusSucceeded) || row.Command != "cancel" {
		t.Errorf("command_log of the cancel: %+v", row)
	}
	if row := e.publishedRow(q1.ID); row.Status != string(contract.StatusCancelled) || row.Started != nil {
		t.Errorf("command_log of the cancelled command: %+v", row)
	}
	if n := e.resultCount("bob"); n != 0 {
		t.Errorf("bob has %d results after refused cancels only", n)
	}
}

// TestCancelNeverWaits: a cancel of a queued command is answered while the
// user's queue is held by a sequence whose step hangs: it waits neither
// behind the queue nor behind what it cancels.
func TestCancelNeverWaits(t *testing.T) {
	e := newEnv(t, 1)
	s := testSettings()
	s.StepTimeout = waitTimeout
	e.startControl("c1", s, 0)
	feed := e.peers[contract.SvcFeed][0]
	feed.Set(contract.VerbApply, testpeer.Hang)
	t.Cleanup(feed.Release)
	held := e.accept("alice", "reload-settings", "")
	testenv.WaitFor(t, waitTimeout, "the reload to reach the feed", func() bool { return len(e.callsOf(held.ID, contract.VerbApply)) > 0 })
	queued := e.accept("alice", "clear-cache", `{"scope":"all"}`)
	c := e.accept("alice", "cancel", `{"id":"`+queued.ID+`"}`)
	if r := e.result("alice", c.ID); r.Status != contract.StatusSucceeded {
		t.Fatalf("cancel: %s %+v", r.Status, r.Error)
	}
	if r := e.result("alice", queued.ID); r.Status != contract.StatusCancelled {
		t.Errorf("queued clear-cache: %s", r.Status)
	}
	if n := e.resultCount("alice"); n != 2 {
		t.Errorf("alice has %d results, want the cancel's and the clear-cache's while the reload still runs", n)
	}
	feed.Release()
	if r := e.result("alice", held.ID); r.Status != contract.StatusSucceeded {
		t.Errorf("reload-settings: %s %+v", r.Status, r.Error)
	}
}

// TestCancelRunningBackfill cancels a force-backfill whose feed job runs
// (beside a second control instance, so the cancel may be accepted by
// either): the feed is told to stop the job (feed.cancel on every
// instance), the job ends cancelled naming the cancel, without going on
// to recompute or to its next timeframe, and the cancel's result carries
// how far the job got. The feed's own test shows the stop between pages
// and the candles kept (services/feed TestVerbsOnTwoInstancesAndFailover).
func TestCancelRunningBackfill(t *testing.T) {
	e := newEnv(t, 3)
	e.startControl("c1", testSettings(), 0)
	e.startControl("c2", testSettings(), 0)
	feed := e.peers[contract.SvcFeed][0]
	feed.Set(contract.VerbBackfill, testpeer.Hang)
	t.Cleanup(feed.Release)
	job := e.accept("alice", "force-backfill", `{"symbol":"BTC-USD","timeframes":["1h","4h"]}`)
	testenv.WaitFor(t, waitTimeout, "the backfill to reach every feed instance", func() bool {
		return len(e.callsOf(job.ID, contract.VerbBackfill)) == 3
	})
	c := e.accept("alice", "cancel", `{"id":"`+job.ID+`"}`)
	// A second cancel conflicts: the job is being cancelled or, when its
	// stop was quick, has already ended.
	if ack, _ := e.send("alice", "cancel", `{"id":"`+job.ID+`"}`, nil); ack.Accepted || ack.Error.Code != contract.CodeConflict ||
		!strings.Contains(ack.Error.Message, "already being cancelled by") && !strings.Contains(ack.Error.Message, "has already ended") {
		t.Errorf("a second cancel of the job: %+v %+v", ack, ack.Error)
	}
	rc := e.result("alice", c.ID)
	if rc.Status != contract.StatusSucceeded {
		t.Fatalf("cancel: %s %+v", rc.Status, rc.Error)
	}
	type progress struct {
		TimeframesDone int                        `json:"timeframes_done"`
		Timeframes     int                        `json:"timeframes"`
		Timeframe      contract.Timeframe         `json:"timeframe"`
		Pages          int                        `json:"pages"`
		PagesTotal     int                        `json:"pages_total"`
		Candles        map[contract.Timeframe]int `json:"candles"`
		Recomputed     contract.Timeframe         `json:"recomputed"`
	}
	res := decode[struct {
		Cancelled bool     `json:"cancelled"`
		ID        string   `json:"id"`
		Progress  progress `json:"progress"`
	}](t, rc.Result)
	want := progress{TimeframesDone: 0, Timeframes: 2, Timeframe: contract.TF1h, Pages: 2, PagesTotal: 3, Candles: map[contract.Timeframe]int{contract.TF1h: 600}}
	if !res.Cancelled || res.ID != job.ID || res.Progress.TimeframesDone != want.TimeframesDone || res.Progress.Timeframes != want.Timeframes ||
		res.Progress.Timeframe != want.Timeframe || res.Progress.Pages != want.Pages || res.Progress.PagesTotal != want.PagesTotal ||
		res.Progress.Candles[contract.TF1h] != 600 || res.Progress.Recomputed != contract.TF1h {
		t.Errorf("cancel result %s, want progress %+v", rc.Result, want)
	}
	rj := e.result("alice", job.ID)
	jr := decode[map[string]any](t, rj.Result)
	if rj.Status != contract.StatusCancelled || jr["cancelled_by"] != c.ID || jr["backfilled"] != false {
		t.Errorf("job: %s %s", rj.Status, rj.Result)
	}
	if got := stepNames(rj.Steps); !slices.Equal(got, []string{"feed.backfill", "feed.cancel", "indicators.recompute"}) {
		t.Errorf("job steps %v, want the backfill, the feed's stop and the recompute of the timeframe it stopped in", got)
	}
	if n := len(e.callsOf(job.ID, contract.VerbCancel)); n != 3 {
		t.Errorf("feed.cancel reached %d feed instances, want 3", n)
	}
	// The pages written before the stop are in Redis: their timeframe is
	// recomputed once (on every indicators instance), the next one is not.
	checkRecomputedOnly(t, e.callsOf(job.ID, contract.VerbRecompute), contract.TF1h)
	if n := len(e.callsOf(job.ID, contract.VerbBackfill)); n != 3 {
		t.Errorf("%d backfill calls, want the 3 of the first timeframe only", n)
	}
	if row := e.publishedRow(c.ID); row.Status != string(contract.StatusSucceeded) {
		t.Errorf("command_log of the cancel: %+v", row)
	}
	if row := e.publishedRow(job.ID); row.Status != string(contract.StatusCancelled) {
		t.Errorf("command_log of the job: %+v", row)
	}
}
