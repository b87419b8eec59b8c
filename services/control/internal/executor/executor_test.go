package executor_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/oklog/ulid/v2"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/executor"
	"vigil.dev/services/control/internal/ledger"
	"vigil.dev/services/control/internal/sequences"
)

// waitTimeout bounds every wait, sized for a loaded 2-core machine.
const waitTimeout = 30 * time.Second

// TestRunsTheQueueInPriorityOrder: commands queued before the executor
// starts run one at a time, highest priority first (pause, then
// reload-settings, then clear-cache), each with its result published once,
// in that order, and the queue is empty afterwards.
func TestRunsTheQueueInPriorityOrder(t *testing.T) {
	h := newHarness(t, true)
	ids := []string{
		h.record(contract.CmdClearCache, `{"scope":"all"}`),
		h.record(contract.CmdReloadSettings, `{}`),
		h.record(contract.CmdPause, `{}`),
	}
	h.start()
	h.waitResults(3)
	want := []string{ids[2], ids[1], ids[0]}
	if got := h.runner.ran(); !slices.Equal(got, want) {
		t.Errorf("ran %v, want %v (pause, reload-settings, clear-cache)", got, want)
	}
	if got := h.pub.resultIDs(); !slices.Equal(got, want) {
		t.Errorf("results published %v, want %v", got, want)
	}
	for _, r := range h.pub.results() {
		if r.Status != contract.StatusSucceeded || r.User != "alice" {
			t.Errorf("result %+v, want alice's succeeded", r)
		}
	}
	testenv.WaitFor(t, waitTimeout, "alice's queue to empty", func() bool { return len(h.ledger.Queue("alice").Items) == 0 })
}

// TestJobRunsBesideTheQueue: a running force-backfill does not hold the
// queue: a reload-settings accepted after it runs and ends while the job
// still runs; the job's result comes when it ends.
func TestJobRunsBesideTheQueue(t *testing.T) {
	h := newHarness(t, true)
	h.start()
	release := h.runner.hold(contract.CmdForceBackfill)
	job := h.record(contract.CmdForceBackfill, `{"symbol":"BTC-USD"}`)
	h.runner.waitStarted(t, job)
	reload := h.record(contract.CmdReloadSettings, `{}`)
	h.waitResults(1)
	if got := h.pub.resultIDs(); !slices.Equal(got, []string{reload}) {
		t.Fatalf("results while the job runs: %v, want only the reload %s", got, reload)
	}
	release()
	h.waitResults(2)
	if got := h.pub.resultIDs(); !slices.Equal(got, []string{reload, job}) {
		t.Errorf("results %v, want the reload then the job", got)
	}
}

// TestRunsOnlyOwnedUsers: an instance that does not own the user runs
// none of its commands; once it owns the user (a membership change), it
// runs them.
func TestRunsOnlyOwnedUsers(t *testing.T) {
	h := newHarness(t, false)
	h.start()
	id := h.record(contract.CmdPause, `{}`)
	h.exec().Kick("alice")
	// The sweep and the kick ran without ownership: still queued.
	testenv.WaitFor(t, waitTimeout, "a sweep", func() bool { return h.members.asked() >= 3 })
	if got := h.runner.ran(); len(got) != 0 {
		t.Fatalf("ran %v without owning alice", got)
	}
	h.members.own(true)
	h.waitResults(1)
	if got := h.runner.ran(); !slices.Equal(got, []string{id}) {
		t.Errorf("ran %v, want %s once owning alice", got, id)
	}
}

// TestStopRequeuesRunningJobs: a clean shutdown cancels a running job and
// puts it back in the queue for the next owner, without a result.
func TestStopRequeuesRunningJobs(t *testing.T) {
	h := newHarness(t, true)
	h.start()
	h.runner.hold(contract.CmdForceBackfill)
	job := h.record(contract.CmdForceBackfill, `{"symbol":"BTC-USD"}`)
	h.runner.waitStarted(t, job)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := h.exec().Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if got := h.pub.resultIDs(); len(got) != 0 {
		t.Errorf("results %v after a clean stop, want none (the job is requeued)", got)
	}
	q := h.ledger.Queue("alice")
	if len(q.Items) != 1 || q.Items[0].ID != job || q.Items[0].Ended != nil || q.Items[0].Instance != "" {
		t.Errorf("queue after stop: %+v, want the job queued again", q.Items)
	}
	if !h.runner.cancelled(job) {
		t.Error("the job's context was not cancelled")
	}
}

// harness is one executor on a real JetStream ledger, with a runner and a
// publisher that record what they are given.
type harness struct {
	t       *testing.T
	nc      *nats.Conn
	ledger  *ledger.Ledger
	runner  *recordingRunner
	members *staticMembers
	pub     *recordingPublisher
	// built is the executor once built: the ledger's watch may call
	// before (exec).
	built atomic.Pointer[executor.Executor]
}

func newHarness(t *testing.T, owns bool) *harness {
	t.Helper()
	nc, js := testenv.Connect(t, testenv.StartNATS(t).URL())
	ctx := context.Background()
	if err := natsx.EnsureControl(ctx, js); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, nc: nc, runner: newRecordingRunner(), members: &staticMembers{owns: owns, changes: make(chan struct{}, 1)}, pub: &recordingPublisher{}}
	var err error
	if h.ledger, err = ledger.Open(ctx, js, ledger.Options{OnChange: func(user string) {
		if e := h.built.Load(); e != nil {
			e.Kick(user)
		}
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.ledger.Stop)
	exec, err := executor.New(executor.Config{Limits: contract.DefaultLimits, MaxJobs: 2, MaxAttempts: 3, SweepInterval: 50 * time.Millisecond},
		h.ledger, h.runner, h.members, h.pub, nc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	h.built.Store(exec)
	return h
}

// exec is the executor under test.
func (h *harness) exec() *executor.Executor { return h.built.Load() }

// start starts the executor; a crash-stop (its context ends) follows the
// test.
func (h *harness) start() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.t.Cleanup(cancel)
	if err := h.exec().Start(ctx); err != nil {
		h.t.Fatal(err)
	}
}

// record accepts one of alice's commands into the ledger, as the intake
// does, and returns its id.
func (h *harness) record(cmd contract.Command, payload string) string {
	h.t.Helper()
	id := ulid.Make().String()
	ack, _, err := h.ledger.Record(context.Background(), ledger.Entry{ID: id, User: "alice", UserID: 7, Command: cmd,
		Payload: json.RawMessage(payload), Priority: cmd.Priority(), Digest: ledger.PayloadDigest(cmd, []byte(payload))}, 16)
	if err != nil || !ack.Accepted {
		h.t.Fatalf("record %s: %+v %v", cmd, ack, err)
	}
	return id
}

// waitResults waits until n results are published.
func (h *harness) waitResults(n int) {
	h.t.Helper()
	testenv.WaitFor(h.t, waitTimeout, "results to be published", func() bool { return len(h.pub.results()) >= n })
}

// recordingRunner runs every command at once with success, in the order
// given, except commands it holds until released.
type recordingRunner struct {
	mu      sync.Mutex
	order   []string
	held    map[contract.Command]chan struct{}
	started map[string]chan struct{}
	stopped map[string]bool
}

func newRecordingRunner() *recordingRunner {
	return &recordingRunner{held: map[contract.Command]chan struct{}{}, started: map[string]chan struct{}{}, stopped: map[string]bool{}}
}

// Run records cmd and succeeds, after its release when held; a held
// command whose context ends is cancelled.
func (r *recordingRunner) Run(ctx context.Context, cmd sequences.Command) sequences.Outcome {
	r.mu.Lock()
	r.order = append(r.order, cmd.ID)
	gate := r.held[cmd.Name]
	started := r.startedOf(cmd.ID)
	r.mu.Unlock()
	close(started)
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			r.mu.Lock()
			r.stopped[cmd.ID] = true
			r.mu.Unlock()
			return sequences.Outcome{Status: contract.StatusCancelled, Error: &contract.Error{Code: contract.CodeConflict, Message: "stopped"}}
		}
	}
	return sequences.Outcome{Status: contract.StatusSucceeded, Result: map[string]any{"ran": cmd.ID}}
}

// startedOf is the channel closed when id starts; the caller holds r.mu.
func (r *recordingRunner) startedOf(id string) chan struct{} {
	c, ok := r.started[id]
	if !ok {
		c = make(chan struct{})
		r.started[id] = c
	}
	return c
}

// hold makes commands of cmd wait until the returned release.
func (r *recordingRunner) hold(cmd contract.Command) (release func()) {
	gate := make(chan struct{})
	r.mu.Lock()
	r.held[cmd] = gate
	r.mu.Unlock()
	return sync.OnceFunc(func() { close(gate) })
}

// waitStarted waits until command id runs.
func (r *recordingRunner) waitStarted(t *testing.T, id string) {
	t.Helper()
	r.mu.Lock()
	c := r.startedOf(id)
	r.mu.Unlock()
	select {
	case <-c:
	case <-time.After(waitTimeout):
		t.Fatalf("command %s did not start", id)
	}
}

func (r *recordingRunner) ran() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.order)
}

func (r *recordingRunner) cancelled(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopped[id]
}

// staticMembers is a membership of this one instance, owning every user
// or none.
type staticMembers struct {
	mu      sync.Mutex
	owns    bool
	asks    int
	changes chan struct{}
}

func (m *staticMembers) Self() string      { return "exec-1" }
func (m *staticMembers) Members() []string { return []string{"exec-1"} }
func (m *staticMembers) Changes() <-chan struct{} {
	return m.changes
}

func (m *staticMembers) Owns(string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.asks++
	return m.owns
}

// own changes ownership and tells the executor, as a membership change
// does.
func (m *staticMembers) own(owns bool) {
	m.mu.Lock()
	m.owns = owns
	m.mu.Unlock()
	m.changes <- struct{}{}
}

func (m *staticMembers) asked() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.asks
}

// recordingPublisher keeps the results published, in order, once per id:
// like VIGIL_RESULTS, which drops a result published again (Nats-Msg-Id
// <user>:<id>), as the executor may do after a retry.
type recordingPublisher struct {
	mu   sync.Mutex
	out  []contract.Result
	seen map[string]uint64 // <user>:<id> → its sequence in out, from 1
}

func (p *recordingPublisher) PublishResult(_ context.Context, en ledger.Entry) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seen == nil {
		p.seen = map[string]uint64{}
	}
	if seq, ok := p.seen[en.User+":"+en.ID]; ok {
		return seq, nil
	}
	p.out = append(p.out, en.Result())
	p.seen[en.User+":"+en.ID] = uint64(len(p.out))
	return uint64(len(p.out)), nil
}

func (p *recordingPublisher) PublishAudit(context.Context, ledger.Entry) error { return nil }

func (p *recordingPublisher) results() []contract.Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.out)
}

func (p *recordingPublisher) resultIDs() []string {
	var ids []string
	for _, r := range p.results() {
		ids = append(ids, r.ID)
	}
	return ids
}
