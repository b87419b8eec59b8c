// Package executor works through the users' command queues: the instance
// that owns a user (membership group vigil-control, key user token) claims
// the user's commands from the ledger one at a time, highest priority first,
// runs each as a sequence and records and publishes its result. Background
// jobs (force-backfill) are claimed from the same queue but run beside it.
//
// Owners learn about new work from the ledger's watch of VIGIL_QUEUE
// (Kick, on every change of a user's queue by any instance), from a
// periodic sweep of the cached queues, and from membership changes. A
// command's path from ACK to result is: claim (one compare-and-set), the
// running audit record (published beside the run), the sequence, finish
// (one compare-and-set), the final audit record and the result (two
// JetStream publishes), and the next claim removes it. A pause cancels the
// user's jobs on every instance with vigil.ctl.cancel.<user>.
//
// A cancel is settled by the ledger when it is recorded; the executor
// only carries it out: the owner publishes the results of commands that
// ended without running (a cancelled queued command, the cancel itself)
// at once, even while a sequence of the user runs, and the instance that
// runs a job marked cancelled stops it the way a pause does (the same
// cancellation of the job's context), on the ledger change that marked it.
//
// Crash semantics: when the context given to Start ends, the executor stops
// at once and writes nothing more, like a crashed process; its running
// commands are then failed (jobs re-run) by the user's next owner. Stop is
// the clean shutdown: it requeues running jobs, lets the running commands
// finish until its context ends, then fails them.
package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/telemetry"
	"vigil.dev/services/control/internal/ledger"
	"vigil.dev/services/control/internal/sequences"
)

// errShutdown is the cancel cause of commands stopped by a clean shutdown.
var errShutdown = errors.New("control instance is shutting down")

// Ledger is the durable command queue (ledger.Ledger).
type Ledger interface {
	Claim(ctx context.Context, user string, opts ledger.ClaimOptions) (ledger.Claimed, error)
	Finish(ctx context.Context, user, id, self string, o ledger.Outcome) (ledger.Entry, bool, error)
	FinishQueued(ctx context.Context, user string, cmd contract.Command, beforeSeq int64, o ledger.Outcome) (int, error)
	Requeue(ctx context.Context, user, id, self string) error
	UsersWithWork() []string
	Queue(user string) ledger.Queue
}

// Runner runs one command (sequences.Runner).
type Runner interface {
	Run(ctx context.Context, cmd sequences.Command) sequences.Outcome
}

// Membership is this instance's view of the live control instances
// (membership.Group).
type Membership interface {
	Self() string
	Owns(key string) bool
	Members() []string
	Changes() <-chan struct{}
}

// Publisher publishes results and audit records.
type Publisher interface {
	// PublishResult publishes en's result (ledger.ResultMsg) and returns
	// its stream sequence.
	PublishResult(ctx context.Context, en ledger.Entry) (uint64, error)
	PublishAudit(ctx context.Context, e ledger.Entry) error
}

// Config tunes the executor.
type Config struct {
	Limits contract.Limits
	// MaxJobs bounds a user's concurrently running background jobs.
	MaxJobs int
	// MaxAttempts bounds how often a job orphaned by a dead executor runs.
	MaxAttempts int
	// SweepInterval is how often the ledger is searched for work.
	SweepInterval time.Duration
}

// Executor runs the queues of the users this instance owns.
type Executor struct {
	cfg     Config
	ledger  Ledger
	runner  Runner
	members Membership
	pub     Publisher
	nc      *nats.Conn
	log     *slog.Logger
	tracer  trace.Tracer
	latency metric.Float64Histogram

	ctx  context.Context // ends on a crash
	stop chan struct{}   // closed by Stop
	wg   sync.WaitGroup
	subs []*nats.Subscription

	mu       sync.Mutex
	loops    map[string]bool // user → work asked for while its loop runs
	tasks    map[string]*task
	settled  map[string][]ledger.Settled // user → ended commands whose result is published
	stopping bool
}

// task is a command this instance runs.
type task struct {
	entry  ledger.Entry
	cancel context.CancelCauseFunc
}

// New returns an executor; Start starts it.
func New(cfg Config, l Ledger, r Runner, m Membership, pub Publisher, nc *nats.Conn, log *slog.Logger) (*Executor, error) {
	latency, err := otel.Meter("vigil.dev/services/control").Float64Histogram("vigil.control.command.duration",
		metric.WithUnit("s"), metric.WithDescription("time from a command's ACK to its result, by command and status"))
	if err != nil {
		return nil, fmt.Errorf("executor: metric: %w", err)
	}
	return &Executor{cfg: cfg, ledger: l, runner: r, members: m, pub: pub, nc: nc, log: log,
		tracer: otel.Tracer("vigil.dev/services/control/executor"), latency: latency,
		stop: make(chan struct{}), loops: map[string]bool{}, tasks: map[string]*task{}, settled: map[string][]ledger.Settled{}}, nil
}

// Start subscribes to the cancel subject and starts the sweeps. The
// executor runs until Stop, or stops at once (crash) when ctx ends.
func (e *Executor) Start(ctx context.Context) error {
	e.mu.Lock() // Kick may come from the ledger's watch meanwhile
	e.ctx = ctx
	e.mu.Unlock()
	cancel, err := e.nc.Subscribe(CancelSubjects, func(m *nats.Msg) {
		if user, ok := userOf(m.Subject); ok {
			e.cancelLocalJobs(user, nil, &sequences.CancelledError{By: string(m.Data), Command: contract.CmdPause})
		}
	})
	if err != nil {
		return fmt.Errorf("executor: subscribe %s: %w", CancelSubjects, err)
	}
	e.subs = []*nats.Subscription{cancel}
	if err := e.nc.Flush(); err != nil {
		return fmt.Errorf("executor: flush: %w", err)
	}
	e.wg.Add(1)
	go e.sweeper()
	return nil
}

func userOf(subject string) (string, bool) {
	i := strings.LastIndexByte(subject, '.')
	user := subject[i+1:]
	return user, contract.ValidateUserToken(user) == nil
}

// Notify tells this instance that user has work (the ledger's watch tells
// every instance, this is the shortcut of the one that recorded it).
func (e *Executor) Notify(user string) { e.Kick(user) }

func (e *Executor) sweeper() {
	defer e.wg.Done()
	tick := time.NewTicker(e.cfg.SweepInterval)
	defer tick.Stop()
	changes := e.members.Changes()
	for {
		e.sweep()
		select {
		case <-e.ctx.Done():
			return
		case <-e.stop:
			return
		case <-tick.C:
		case <-changes:
		}
	}
}

// sweep kicks every owned user with work in the ledger.
func (e *Executor) sweep() {
	for _, u := range e.ledger.UsersWithWork() {
		e.Kick(u)
	}
}

func (e *Executor) isStopping() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stopping || e.ctx.Err() != nil
}

// Kick makes sure the queue of user runs here if this instance owns it,
// publishes at once the results of the user's commands that ended without
// running, and stops the user's jobs running here that a cancel marked
// (on any instance: a job may outlive its owner's ownership).
func (e *Executor) Kick(user string) {
	e.stopCancelledJobs(user)
	if !e.members.Owns(user) {
		return
	}
	e.publishUnrun(user)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopping || e.ctx == nil || e.ctx.Err() != nil {
		return
	}
	_, running := e.loops[user]
	e.loops[user] = true
	if !running {
		e.wg.Add(1)
		go e.loop(user)
	}
}

// loop drains user's queue until no kick came in meanwhile.
func (e *Executor) loop(user string) {
	defer e.wg.Done()
	for {
		e.mu.Lock()
		again := e.loops[user]
		if !again || e.stopping || e.ctx.Err() != nil {
			delete(e.loops, user)
			e.mu.Unlock()
			return
		}
		e.loops[user] = false
		e.mu.Unlock()
		e.drain(user)
	}
}

// drain claims and runs user's commands while this instance owns the
// user, and publishes the results of ended commands (its own, cancelled
// or superseded ones, those of dead executors).
func (e *Executor) drain(user string) {
	for !e.isStopping() {
		if !e.members.Owns(user) {
			return // the new owner takes over on its membership change
		}
		settled := e.settledOf(user)
		c, err := e.ledger.Claim(e.ctx, user, ledger.ClaimOptions{
			Self: e.members.Self(), SelfRunning: e.runningIDs(), Members: e.members.Members(),
			MaxJobs: e.cfg.MaxJobs, MaxAttempts: e.cfg.MaxAttempts, Settled: settled,
			OrphanError: func(en ledger.Entry) contract.Error {
				return contract.Error{Code: contract.CodeUnavailable, Message: fmt.Sprintf(
					"executor %s died while running the command; its outcome is unknown (the desired state converges), send it again to confirm", en.Instance)}
			},
		})
		if err != nil {
			e.logErr("claim failed; the sweep retries", err, "user", user)
			return
		}
		e.dropSettled(user, settled)
		published := 0
		for _, en := range c.Ended {
			if en.Instance != "" && en.Instance != e.members.Self() {
				e.log.Warn("publishing the result of another executor's command", "user", user, "id", en.ID,
					"executor", en.Instance, "status", en.Ended.Status)
			}
			if e.publish(en) {
				published++
			}
		}
		for _, id := range c.Requeued {
			e.log.Warn("requeued the job of a dead executor", "user", user, "id", id)
		}
		if c.Next == nil {
			if published > 0 {
				continue // remove what was just published
			}
			return
		}
		if c.Next.IsJob() {
			e.startJob(*c.Next)
			continue
		}
		e.execute(*c.Next)
	}
}

// runningIDs are the ids of the commands and jobs this instance runs.
func (e *Executor) runningIDs() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	ids := make([]string, 0, len(e.tasks))
	for id := range e.tasks {
		ids = append(ids, id)
	}
	return ids
}

// execute runs a queued command to its end here. A pause first cancels
// the user's background jobs.
func (e *Executor) execute(en ledger.Entry) {
	ctx, t := e.register(en)
	if en.Command == contract.CmdPause {
		if err := e.cancelJobs(ctx, en); err != nil {
			e.logErr("queued jobs not cancelled; the pause goes on", err, "user", en.User, "id", en.ID)
		}
	}
	out, traceID := e.run(ctx, en)
	if errors.Is(context.Cause(ctx), errShutdown) && out.Status != contract.StatusSucceeded {
		out = sequences.Outcome{Status: contract.StatusFailed, Steps: out.Steps, Result: out.Result, Error: &contract.Error{Code: contract.CodeUnavailable,
			Message: fmt.Sprintf("control instance %s shut down during the command; send it again to confirm", e.members.Self())}}
	}
	e.finish(t, out, traceID)
}

// settledOf returns user's ended commands whose results this instance
// published.
func (e *Executor) settledOf(user string) []ledger.Settled {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.settled[user])
}

// published reports whether settled holds command id.
func published(settled []ledger.Settled, id string) bool {
	return slices.ContainsFunc(settled, func(s ledger.Settled) bool { return s.ID == id })
}

// dropSettled forgets settled commands once a claim removed them.
func (e *Executor) dropSettled(user string, removed []ledger.Settled) {
	e.mu.Lock()
	defer e.mu.Unlock()
	left := slices.DeleteFunc(e.settled[user], func(s ledger.Settled) bool { return slices.Contains(removed, s) })
	if len(left) == 0 {
		delete(e.settled, user)
		return
	}
	e.settled[user] = left
}

func (e *Executor) register(en ledger.Entry) (context.Context, *task) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		if err := e.pub.PublishAudit(e.ctx, en); err != nil {
			e.logErr("running audit record not published; the final one follows", err, "id", en.ID)
		}
	}()
	ctx, cancel := context.WithCancelCause(e.ctx)
	t := &task{entry: en, cancel: cancel}
	e.mu.Lock()
	e.tasks[en.ID] = t
	e.mu.Unlock()
	return ctx, t
}

func (e *Executor) unregister(t *task) {
	t.cancel(nil)
	e.mu.Lock()
	delete(e.tasks, t.entry.ID)
	e.mu.Unlock()
}

// run decodes and runs en as one trace, continuing the accepting span's,
// and returns the outcome and the trace id.
func (e *Executor) run(ctx context.Context, en ledger.Entry) (sequences.Outcome, string) {
	ctx = otel.GetTextMapPropagator().Extract(ctx, propagation.MapCarrier{"traceparent": en.TraceParent})
	ctx, span := e.tracer.Start(ctx, "vigil-control "+string(en.Command), trace.WithAttributes(
		attribute.String("vigil.user", en.User), attribute.String("vigil.command", string(en.Command)),
		attribute.String("vigil.command_id", en.ID), attribute.Int("vigil.attempt", en.Attempts)))
	defer span.End()
	log := e.log.With("user", en.User, "command", en.Command, "id", en.ID)
	log.InfoContext(ctx, "command started", "attempt", en.Attempts)
	var out sequences.Outcome
	payload, err := contract.DecodeRecordedPayload(en.Command, en.Payload, e.cfg.Limits)
	if err != nil {
		out = sequences.Outcome{Status: contract.StatusFailed, Error: contract.ErrorFrom(err, contract.CodeInvalidPayload)}
	} else {
		out = e.runner.Run(ctx, sequences.Command{ID: en.ID, User: en.User, Name: en.Command, Payload: payload})
	}
	span.SetAttributes(attribute.String("vigil.status", string(out.Status)))
	if out.Error != nil {
		span.SetStatus(codes.Error, out.Error.Message)
		log.WarnContext(ctx, "command ended", "status", out.Status, "code", out.Error.Code, "err", out.Error.Message)
	} else {
		log.InfoContext(ctx, "command ended", "status", out.Status)
	}
	return out, telemetry.TraceID(ctx)
}

// finish records the outcome (retrying until the ledger answers or the
// executor crashes) and publishes the result.
func (e *Executor) finish(t *task, out sequences.Outcome, traceID string) {
	defer func() {
		e.unregister(t)
		if e.ctx.Err() == nil && t.entry.IsJob() {
			e.Kick(t.entry.User) // remove it, claim what waited for a job slot
		}
	}()
	lo := ledger.Outcome{Status: out.Status, Error: out.Error, Steps: out.Steps, TraceID: traceID}
	if out.Result != nil {
		b, err := json.Marshal(out.Result)
		if err != nil {
			lo.Status, lo.Error = contract.StatusFailed, &contract.Error{Code: contract.CodeInternal, Message: "result not encodable: " + err.Error()}
		}
		lo.Result = b
	}
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		ended, ok, err := e.ledger.Finish(e.ctx, t.entry.User, t.entry.ID, e.members.Self(), lo)
		if err == nil {
			if !ok {
				e.log.Warn("result dropped: another instance finished the command (this one was taken for dead)", "id", t.entry.ID)
				return
			}
			e.latency.Record(e.ctx, ended.Ended.FinishedAt.Sub(ended.AcceptedAt).Seconds(), metric.WithAttributes(
				attribute.String("command", string(ended.Command)), attribute.String("status", string(ended.Ended.Status))))
			e.publish(ended)
			return
		}
		if e.ctx.Err() != nil {
			return
		}
		e.log.Error("result not recorded; retrying", "id", t.entry.ID, "err", err)
		select {
		case <-e.ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

// publishTimeout bounds one publish of an audit record or a result.
const publishTimeout = 2 * time.Second

// publish publishes an ended command's audit record and result, and
// marks it settled so the user's next claim removes it; a failure leaves
// it to a later claim, which hands it out again. The two publishes run
// side by side: each is deduplicated by its Nats-Msg-Id and neither needs
// the other, so a retry after a failure of either sends both again.
// They wait at most publishTimeout: one sent while its stream changes
// leader gets no answer, and the next claim (a sweep later) sends it
// again to the new leader sooner than a longer wait would end.
func (e *Executor) publish(en ledger.Entry) bool {
	ctx, cancel := context.WithTimeout(e.ctx, publishTimeout)
	defer cancel()
	audit := make(chan error, 1)
	go func() { audit <- e.pub.PublishAudit(ctx, en) }()
	seq, resultErr := e.pub.PublishResult(ctx, en)
	if err := <-audit; err != nil {
		e.logErr("audit record not published; retried later", err, "id", en.ID)
		return false
	}
	if resultErr != nil {
		e.logErr("result not published; retried later", resultErr, "id", en.ID)
		return false
	}
	e.mu.Lock()
	if !published(e.settled[en.User], en.ID) {
		e.settled[en.User] = append(e.settled[en.User], ledger.Settled{ID: en.ID, ResultSeq: seq})
	}
	e.mu.Unlock()
	return true
}

func (e *Executor) logErr(msg string, err error, args ...any) {
	if e.ctx.Err() == nil {
		e.log.Warn(msg, append(args, "err", err)...)
	}
}

// Running lists the ids of the commands and jobs this instance runs.
func (e *Executor) Running() map[string][]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string][]string{}
	for id, t := range e.tasks {
		out[t.entry.User] = append(out[t.entry.User], id)
	}
	return out
}

// Stop shuts down cleanly: no new claims, running jobs go back to the queue
// for the next owner, running commands may finish until ctx ends and are
// then failed.
func (e *Executor) Stop(ctx context.Context) error {
	e.mu.Lock()
	if !e.stopping {
		close(e.stop)
	}
	e.stopping = true
	for _, t := range e.tasks {
		if t.entry.IsJob() {
			t.cancel(errShutdown)
		}
	}
	e.mu.Unlock()
	for _, s := range e.subs {
		_ = s.Unsubscribe()
	}
	done := make(chan struct{})
	go func() {
		e.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	e.mu.Lock()
	for _, t := range e.tasks {
		t.cancel(errShutdown)
	}
	e.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-time.After(2 * time.Second):
		return fmt.Errorf("executor: commands still running at shutdown: %w", ctx.Err())
	}
}
