package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/ledger"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// waitTimeout bounds every wait for a condition.
const waitTimeout = 20 * time.Second

// entry is a command of user to record.
func entry(id, user string, cmd contract.Command) ledger.Entry {
	return ledger.Entry{ID: id, User: user, UserID: 7, Command: cmd, Payload: []byte(`{}`),
		Digest: ledger.PayloadDigest(cmd, []byte(`{}`))}
}

// clock is a settable clock.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }
func newJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	srv := testenv.StartNATS(t)
	_, js := testenv.Connect(t, srv.URL())
	if err := natsx.EnsureControl(context.Background(), js); err != nil {
		t.Fatal(err)
	}
	return js
}

func open(t *testing.T, js jetstream.JetStream, opts ledger.Options) *ledger.Ledger {
	t.Helper()
	l, err := ledger.Open(context.Background(), js, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Stop)
	return l
}

// TestRecord records commands one after the other: positions count the
// commands that run first, a known id returns its first ACK or a conflict
// that names only the user's own command, ids are per user, and a full
// queue is busy.
func TestRecord(t *testing.T) {
	ctx := context.Background()
	var clk clock
	l := open(t, newJS(t), ledger.Options{Now: clk.now})
	const limit = 3
	if _, dup, err := l.Record(ctx, entry("c1", "alice", contract.CmdClearCache), limit); err != nil || dup {
		t.Fatalf("first record: dup %v err %v", dup, err)
	}
	other := entry("c3", "alice", contract.CmdPause)
	other.Payload, other.Digest = []byte(`{"x":1}`), ledger.PayloadDigest(contract.CmdPause, []byte(`{"x":1}`))
	for _, tc := range []struct {
		name     string
		e        ledger.Entry
		wantErr  error
		wantDup  bool
		position int
	}{
		{"queued behind a clear-cache", entry("c2", "alice", contract.CmdClearCache), nil, false, 1},
		{"pause before both", entry("c3", "alice", contract.CmdPause), nil, false, 0},
		{"same id again", entry("c3", "alice", contract.CmdPause), nil, true, 0},
		{"same id, other user", entry("c3", "bob", contract.CmdPause), nil, false, 0},
		{"same id, other payload", other, ledger.ErrIDConflict, false, 0},
		{"same id, other command", entry("c3", "alice", contract.CmdResume), ledger.ErrIDConflict, false, 0},
		{"reload-settings after the pause", entry("c4", "alice", contract.CmdReloadSettings), nil, false, 1},
		{"backfill last", entry("c5", "alice", contract.CmdForceBackfill), ledger.ErrBusy, false, 0},
		{"other user's queue", entry("c6", "bob", contract.CmdResume), nil, false, 0},
	} {
		ack, dup, err := l.Record(ctx, tc.e, limit)
		switch {
		case !errors.Is(err, tc.wantErr):
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.wantErr)
		case err != nil:
		case dup != tc.wantDup || ack.Position != tc.position || !ack.Accepted || ack.ID != tc.e.ID || ack.User != tc.e.User:
			t.Errorf("%s: ack %+v dup %v, want position %d dup %v", tc.name, ack, dup, tc.position, tc.wantDup)
		}
		if err != nil && strings.Contains(err.Error(), "bob") && tc.e.User == "alice" {
			t.Errorf("%s: error names another tenant: %v", tc.name, err)
		}
	}
	q := l.Queue("alice")
	if len(q.Items) != 4 {
		t.Fatalf("alice's queue holds %d commands, want 4: %+v", len(q.Items), q.Items)
	}
	// After the window the id is remembered as long as the command is
	// queued (conflict), and forgotten once it is settled.
	clk.advance(ledger.DedupeWindow + time.Second)
	if _, _, err := l.Record(ctx, entry("c1", "alice", contract.CmdClearCache), limit); !errors.Is(err, ledger.ErrIDConflict) {
		t.Errorf("queued id older than the window: %v, want conflict", err)
	}
}

// claimOpts are the options of executor self among members.
func claimOpts(self string, running []string, members ...string) ledger.ClaimOptions {
	return ledger.ClaimOptions{Self: self, SelfRunning: running, Members: append(members, self), MaxJobs: 2, MaxAttempts: 3,
		OrphanError: func(e ledger.Entry) contract.Error {
			return contract.Error{Code: contract.CodeUnavailable, Message: "executor " + e.Instance + " died"}
		}}
}

// settled are ended commands whose results were published (at no
// sequence in particular: these tests run without results).
func settled(ids ...string) []ledger.Settled {
	out := make([]ledger.Settled, len(ids))
	for i, id := range ids {
		out[i] = ledger.Settled{ID: id}
	}
	return out
}

// TestPriorities claims a user's commands in priority order, FIFO within
// a priority, jobs beside the queue up to MaxJobs.
func TestPriorities(t *testing.T) {
	ctx := context.Background()
	l := open(t, newJS(t), ledger.Options{})
	for i, cmd := range []contract.Command{contract.CmdForceBackfill, contract.CmdClearCache, contract.CmdForceBackfill,
		contract.CmdSwitchMode, contract.CmdForceBackfill, contract.CmdReloadSettings, contract.CmdPause} {
		if _, _, err := l.Record(ctx, entry(fmt.Sprint("c", i), "alice", cmd), 32); err != nil {
			t.Fatal(err)
		}
	}
	var order, done, running []string
	for range 10 {
		opts := claimOpts("x1", running)
		opts.Settled = settled(done...)
		c, err := l.Claim(ctx, "alice", opts)
		if err != nil {
			t.Fatal(err)
		}
		if c.Next == nil {
			break
		}
		order = append(order, c.Next.ID)
		if c.Next.IsJob() {
			running = append(running, c.Next.ID)
			continue
		}
		ended, ok, err := l.Finish(ctx, "alice", c.Next.ID, "x1", ledger.Outcome{Status: contract.StatusSucceeded})
		if err != nil || !ok || ended.Ended == nil {
			t.Fatalf("finish %s: %v %v", c.Next.ID, ok, err)
		}
		done = append(done, c.Next.ID)
	}
	want := []string{"c6", "c3", "c5", "c1", "c0", "c2"}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("claimed %v, want %v (the third backfill waits for a job slot)", order, want)
	}
	if d := l.Depths()["alice"]; d.Queued != 1 || d.Jobs != 2 {
		t.Fatalf("depth %+v, want 1 queued and 2 jobs", d)
	}
}

// TestPauseAndResumeAreNeverBusy fills the queue and the job slots; pause
// and resume are still accepted, run next, and only one of them waits: a
// newer one supersedes it, which ends cancelled naming the newer.
func TestPauseAndResumeAreNeverBusy(t *testing.T) {
	ctx := context.Background()
	l := open(t, newJS(t), ledger.Options{})
	const limit = 4
	for i := range 2 {
		if _, _, err := l.Record(ctx, entry(fmt.Sprint("job", i), "alice", contract.CmdForceBackfill), limit); err != nil {
			t.Fatal(err)
		}
	}
	var running []string
	for range 2 {
		c, err := l.Claim(ctx, "alice", claimOpts("x1", running))
		if err != nil || c.Next == nil {
			t.Fatalf("claim job: %+v %v", c, err)
		}
		running = append(running, c.Next.ID)
	}
	for i := range limit {
		if _, _, err := l.Record(ctx, entry(fmt.Sprint("q", i), "alice", contract.CmdClearCache), limit); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := l.Record(ctx, entry("more", "alice", contract.CmdClearCache), limit); !errors.Is(err, ledger.ErrBusy) {
		t.Fatalf("full queue: %v, want busy", err)
	}
	for i, cmd := range []contract.Command{contract.CmdPause, contract.CmdResume, contract.CmdPause} {
		ack, _, err := l.Record(ctx, entry(fmt.Sprint("p", i), "alice", cmd), limit)
		if err != nil || ack.Position != 0 {
			t.Fatalf("%s on a full queue: %+v %v, want accepted at position 0", cmd, ack, err)
		}
	}
	c, err := l.Claim(ctx, "alice", claimOpts("x1", running))
	if err != nil || c.Next == nil || c.Next.ID != "p2" {
		t.Fatalf("next = %+v (%v), want the newest pause p2", c.Next, err)
	}
	got := map[string]string{}
	for _, e := range c.Ended {
		got[e.ID] = string(e.Ended.Status) + " " + string(e.Ended.Result)
	}
	want := map[string]string{
		"p0": `cancelled {"cancelled":true,"superseded_by":"p1"}`,
		"p1": `cancelled {"cancelled":true,"superseded_by":"p2"}`,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ended %v, want %v", got, want)
	}
	if d := l.Depths()["alice"]; d.Queued != limit || d.Jobs != 2 || d.Running != "p2" {
		t.Fatalf("depth %+v", d)
	}
}

// TestTakeover: a running command of a dead executor fails, a job of a
// dead executor is requeued (until its attempts are used up), a live
// executor's command is left alone, and an outcome finished but not
// published is handed out again.
func TestTakeover(t *testing.T) {
	ctx := context.Background()
	l := open(t, newJS(t), ledger.Options{})
	for _, e := range []ledger.Entry{entry("job", "alice", contract.CmdForceBackfill), entry("done", "bob", contract.CmdPause)} {
		if _, _, err := l.Record(ctx, e, 32); err != nil {
			t.Fatal(err)
		}
	}
	a1, err := l.Claim(ctx, "alice", claimOpts("dead", nil))
	if err != nil || a1.Next == nil || a1.Next.ID != "job" {
		t.Fatalf("claim job: %+v %v", a1, err)
	}
	if _, _, err := l.Record(ctx, entry("cmd", "alice", contract.CmdClearCache), 32); err != nil {
		t.Fatal(err)
	}
	a2, err := l.Claim(ctx, "alice", claimOpts("dead", []string{"job"}))
	if err != nil || a2.Next == nil || a2.Next.ID != "cmd" {
		t.Fatalf("claim: %+v %v", a2, err)
	}
	// While "dead" is a member, another instance leaves its work alone.
	c, err := l.Claim(ctx, "alice", claimOpts("x2", nil, "dead"))
	if err != nil || c.Next != nil || len(c.Ended) != 0 || len(c.Requeued) != 0 {
		t.Fatalf("claim beside a live executor changed something: %+v %v", c, err)
	}
	c, err = l.Claim(ctx, "alice", claimOpts("x2", nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Ended) != 1 || c.Ended[0].ID != "cmd" || c.Ended[0].Ended.Status != contract.StatusFailed ||
		c.Ended[0].Ended.Error.Code != contract.CodeUnavailable || fmt.Sprint(c.Requeued) != "[job]" {
		t.Fatalf("takeover: %+v", c)
	}
	if c.Next == nil || c.Next.ID != "job" || c.Next.Attempts != 2 || c.Next.Instance != "x2" {
		t.Fatalf("requeued job not claimed again by x2: %+v", c.Next)
	}
	if _, ok, _ := l.Finish(ctx, "alice", "cmd", "dead", ledger.Outcome{Status: contract.StatusSucceeded}); ok {
		t.Fatal("the dead executor finished a command that was taken over")
	}
	// bob: finished by an executor that died before it published.
	b, err := l.Claim(ctx, "bob", claimOpts("dead", nil))
	if err != nil || b.Next == nil {
		t.Fatal(b, err)
	}
	if _, ok, err := l.Finish(ctx, "bob", "done", "dead", ledger.Outcome{Status: contract.StatusSucceeded}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	b, err = l.Claim(ctx, "bob", claimOpts("x2", nil))
	if err != nil || len(b.Ended) != 1 || b.Ended[0].Ended.Status != contract.StatusSucceeded {
		t.Fatalf("unpublished outcome not handed out: %+v %v", b, err)
	}
	opts := claimOpts("x2", nil)
	opts.Settled = settled("done")
	if b, err = l.Claim(ctx, "bob", opts); err != nil || len(b.Ended) != 0 || len(l.Queue("bob").Items) != 0 {
		t.Fatalf("settled command not removed: %+v %v %+v", b, err, l.Queue("bob"))
	}
}

// TestSettledIDs: an id is a duplicate while its command is queued and
// within DedupeWindow of its acceptance once it settled, also when
// vigil-control generated it (sent again, it is the requester's), and a
// conflict with another payload; a cancel of a settled command is
// refused as too late. Settled commands leave nothing in the queue
// entry: their ids are answered from their results in VIGIL_RESULTS
// (ResultIndex), also while the index has not read them yet.
func TestSettledIDs(t *testing.T) {
	ctx := context.Background()
	js := newJS(t)
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	results, err := ledger.OpenResultIndex(ctx, js, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(results.Stop)
	clk := &clock{}
	l := open(t, js, ledger.Options{Settled: results.Settled, Now: clk.now})
	// end ends e, which x1 runs: finished, its result published, removed
	// from the queue.
	end := func(e ledger.Entry) {
		t.Helper()
		clk.advance(time.Second)
		ended, ok, err := l.Finish(ctx, e.User, e.ID, "x1", ledger.Outcome{Status: contract.StatusSucceeded})
		if !ok || err != nil {
			t.Fatal(ok, err)
		}
		msg, err := ledger.ResultMsg(ended)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := js.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		opts := claimOpts("x1", nil)
		opts.Settled = []ledger.Settled{{ID: e.ID, ResultSeq: pub.Sequence}}
		if _, err := l.Claim(ctx, e.User, opts); err != nil {
			t.Fatal(err)
		}
	}
	// settle claims e for x1 and ends it.
	settle := func(e ledger.Entry) {
		t.Helper()
		c, err := l.Claim(ctx, e.User, claimOpts("x1", nil))
		if err != nil || c.Next == nil || c.Next.ID != e.ID {
			t.Fatalf("claim %s: %+v %v", e.ID, c, err)
		}
		end(e)
	}
	for i := range 20 {
		e := entry(fmt.Sprint("gen", i), "carol", contract.CmdPause)
		if _, dup, err := l.Record(ctx, e, 32); err != nil || dup {
			t.Fatalf("record %s: %v %v", e.ID, dup, err)
		}
		e.Chosen = true
		if ack, dup, err := l.Record(ctx, e, 32); err != nil || !dup || ack.ID != e.ID {
			t.Fatalf("repeated while queued: %+v %v %v", ack, dup, err)
		}
		settle(e)
		// At once, before the index may have read the result: asked of the
		// stream's leader.
		if ack, dup, err := l.Record(ctx, e, 32); err != nil || !dup || ack.ID != e.ID {
			t.Fatalf("repeated right after it settled: %+v %v %v", ack, dup, err)
		}
	}
	// A position other than 0 comes back too.
	running := entry("run", "carol", contract.CmdClearCache)
	if _, _, err := l.Record(ctx, running, 32); err != nil {
		t.Fatal(err)
	}
	if c, err := l.Claim(ctx, "carol", claimOpts("x1", nil)); err != nil || c.Next == nil || c.Next.ID != "run" {
		t.Fatal(c, err)
	}
	second := entry("second", "carol", contract.CmdSwitchMode)
	second.Chosen = true
	first, _, err := l.Record(ctx, second, 32)
	if err != nil || first.Position != 1 {
		t.Fatalf("behind a running command: %+v %v", first, err)
	}
	end(running) // its removal claims second
	end(second)
	if ack, dup, err := l.Record(ctx, second, 32); err != nil || !dup || ack != first {
		t.Fatalf("settled id again: %+v %v %v, want %+v", ack, dup, err, first)
	}
	q := l.Queue("carol")
	if len(q.Items) != 0 || len(q.Recent) != 0 || q.SettledSeq == 0 {
		t.Fatalf("after 22 settled commands: %d items, %d recent ids, settled seq %d", len(q.Items), len(q.Recent), q.SettledSeq)
	}
	bobs := entry("gen3", "bob", contract.CmdClearCache)
	bobs.Chosen = true
	if _, dup, err := l.Record(ctx, bobs, 32); err != nil || dup {
		t.Fatalf("bob's own gen3: %v %v", dup, err)
	}
	again := entry("gen3", "carol", contract.CmdPause)
	again.Chosen = true
	if ack, dup, err := l.Record(ctx, again, 32); err != nil || !dup || ack.ID != "gen3" || ack.Command != contract.CmdPause {
		t.Fatalf("settled id again: %+v %v %v", ack, dup, err)
	}
	other := entry("gen4", "carol", contract.CmdResume)
	other.Chosen = true
	if _, _, err := l.Record(ctx, other, 32); !errors.Is(err, ledger.ErrIDConflict) || !strings.Contains(err.Error(), "another payload") {
		t.Fatalf("settled id for another command: %v", err)
	}
	c := entry("c1", "carol", contract.CmdCancel)
	c.Payload = []byte(`{"id":"gen0"}`)
	if _, _, err := l.Record(ctx, c, 32); !errors.Is(err, ledger.ErrCancelRefused) || !strings.Contains(err.Error(), "has already ended") {
		t.Fatalf("cancel of a settled command: %v", err)
	}
	clk.advance(ledger.DedupeWindow)
	if _, _, err := l.Record(ctx, again, 32); !errors.Is(err, ledger.ErrIDConflict) || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("settled id after the window: %v", err)
	}
	// Accepted 11 minutes ago, settled one minute ago: a conflict.
	slow := entry("slow", "carol", contract.CmdPause)
	slow.Chosen = true
	if _, dup, err := l.Record(ctx, slow, 32); err != nil || dup {
		t.Fatalf("a new chosen id: %v %v", dup, err)
	}
	clk.advance(ledger.DedupeWindow)
	settle(slow)
	if _, _, err := l.Record(ctx, slow, 32); !errors.Is(err, ledger.ErrIDConflict) || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("id accepted 11 minutes ago, settled a moment ago: %v", err)
	}
}

// TestRecentOfAnEarlierVersion: ids kept in the queue entry's Recent by a
// vigil-control before SettledSeq are still answered until they expire.
func TestRecentOfAnEarlierVersion(t *testing.T) {
	ctx := context.Background()
	js := newJS(t)
	kv, err := js.KeyValue(ctx, natsx.BucketQueue)
	if err != nil {
		t.Fatal(err)
	}
	old := entry("old1", "dave", contract.CmdClearCache)
	settledAt := time.Now().UTC()
	doc := fmt.Sprintf(`{"seq":1,"items":[],"recent":[{"id":"old1","command":"clear-cache","digest":%q,"position":2,"accepted_at":%q,"settled_at":%q}]}`,
		old.Digest, settledAt.Add(-time.Minute).Format(time.RFC3339Nano), settledAt.Format(time.RFC3339Nano))
	if _, err := kv.Put(ctx, contract.StateKey("dave"), []byte(doc)); err != nil {
		t.Fatal(err)
	}
	l := open(t, js, ledger.Options{})
	old.Chosen = true
	if ack, dup, err := l.Record(ctx, old, 32); err != nil || !dup || ack.Position != 2 {
		t.Fatalf("an id an earlier version kept: %+v %v %v", ack, dup, err)
	}
	c := entry("c1", "dave", contract.CmdCancel)
	c.Payload = []byte(`{"id":"old1"}`)
	if _, _, err := l.Record(ctx, c, 32); !errors.Is(err, ledger.ErrCancelRefused) {
		t.Fatalf("cancel of a command an earlier version settled: %v", err)
	}
}

// TestConcurrentRecords records from two ledgers (two instances) at once:
// every write is a compare-and-set, so the queue stops exactly at the
// limit, each id is recorded once, and both caches converge.
func TestConcurrentRecords(t *testing.T) {
	ctx := context.Background()
	js := newJS(t)
	var changes atomic.Int64
	l1 := open(t, js, ledger.Options{})
	l2 := open(t, js, ledger.Options{OnChange: func(string) { changes.Add(1) }})
	const limit, n = 10, 30
	var accepted, busy atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := l1
			if i%2 == 1 {
				l = l2
			}
			_, _, err := l.Record(ctx, entry(fmt.Sprint("c", i%20), "alice", contract.CmdClearCache), limit)
			switch {
			case err == nil:
				accepted.Add(1)
			case errors.Is(err, ledger.ErrBusy):
				busy.Add(1)
			default:
				t.Errorf("record: %v", err)
			}
		}()
	}
	wg.Wait()
	if got := len(l1.Queue("alice").Items); got != limit {
		t.Fatalf("queue holds %d, want %d (accepted %d incl. duplicates, busy %d)", got, limit, accepted.Load(), busy.Load())
	}
	testenv.WaitFor(t, waitTimeout, "the second instance's cache", func() bool { return len(l2.Queue("alice").Items) == limit })
	if changes.Load() == 0 {
		t.Error("the watch reported no change")
	}
}

// cancelOf is a cancel of target.
func cancelOf(id, user, target string) ledger.Entry {
	payload := []byte(`{"id":"` + target + `"}`)
	return ledger.Entry{ID: id, User: user, UserID: 7, Command: contract.CmdCancel, Payload: payload,
		Digest: ledger.PayloadDigest(contract.CmdCancel, payload)}
}

// TestCancelRunningJob: a cancel of a running job waits (unclaimable)
// until the job ends: cancelled by it → the cancel succeeds with the
// job's progress; ended otherwise first → the cancel fails conflict; its
// executor died → the job ends cancelled instead of re-running.
func TestCancelRunningJob(t *testing.T) {
	ctx := context.Background()
	l := open(t, newJS(t), ledger.Options{})
	ended := func(user, id string) *ledger.Ended {
		t.Helper()
		for _, e := range l.Queue(user).Items {
			if e.ID == id {
				return e.Ended
			}
		}
		t.Fatalf("%s of %s is not in the queue", id, user)
		return nil
	}
	start := func(user, job string) {
		t.Helper()
		if _, _, err := l.Record(ctx, entry(job, user, contract.CmdForceBackfill), 8); err != nil {
			t.Fatal(err)
		}
		if c, err := l.Claim(ctx, user, claimOpts("x1", []string{job})); err != nil || c.Next == nil || c.Next.ID != job {
			t.Fatalf("claim %s: %+v %v", job, c, err)
		}
		if _, _, err := l.Record(ctx, cancelOf("cancel-"+job, user, job), 8); err != nil {
			t.Fatal(err)
		}
		if c, err := l.Claim(ctx, user, claimOpts("x1", []string{job})); err != nil || c.Next != nil {
			t.Fatalf("the waiting cancel was claimed: %+v %v", c.Next, err)
		}
	}

	start("alice", "j1")
	progress := `{"pages":2,"total":9}`
	if _, ok, err := l.Finish(ctx, "alice", "j1", "x1", ledger.Outcome{Status: contract.StatusCancelled,
		Result: []byte(`{"backfilled":false,"progress":` + progress + `}`)}); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if e := ended("alice", "cancel-j1"); e == nil || e.Status != contract.StatusSucceeded ||
		string(e.Result) != `{"cancelled":true,"id":"j1","progress":`+progress+`}` {
		t.Errorf("cancel of a stopped job: %+v", e)
	}

	start("bob", "j2")
	if _, _, err := l.Finish(ctx, "bob", "j2", "x1", ledger.Outcome{Status: contract.StatusSucceeded}); err != nil {
		t.Fatal(err)
	}
	if e := ended("bob", "cancel-j2"); e == nil || e.Status != contract.StatusFailed || e.Error.Code != contract.CodeConflict ||
		!strings.Contains(e.Error.Message, "ended succeeded before the cancel reached it") {
		t.Errorf("cancel of a job that finished first: %+v", e)
	}

	start("carol", "j3")
	if _, err := l.Claim(ctx, "carol", claimOpts("x2", nil)); err != nil { // x1 is dead
		t.Fatal(err)
	}
	if e := ended("carol", "j3"); e == nil || e.Status != contract.StatusCancelled {
		t.Errorf("the orphaned cancelled job: %+v", e)
	}
	if e := ended("carol", "cancel-j3"); e == nil || e.Status != contract.StatusSucceeded {
		t.Errorf("cancel of an orphaned job: %+v", e)
	}
}
