// Package ledger is vigil-control's durable command queue, held in
// JetStream: each user's queue is one entry of the KV bucket VIGIL_QUEUE
// (key user.<token>), replicated like the streams and written only with
// compare-and-set on the entry's revision. Every control instance keeps
// the whole bucket in a local cache fed by a watch, so accepting a command
// is a validation plus one compare-and-set write, and an instance learns
// of another's change within one watch delivery.
//
// A user's queue entry holds the commands accepted and not yet settled
// (queued, running, or ended with a result waiting to be published). A
// settled command's id is answered from its result in VIGIL_RESULTS
// (ResultIndex), which carries what its first ACK said: the entry does
// not grow with the ids of the last DedupeWindow. Queued commands run by
// priority (highest first), then in order of acceptance (seq). A running
// command other than force-backfill is the user's queue lock: while it
// runs no other command of the user is claimed. force-backfill commands
// run as background jobs beside the queue, at most MaxJobs at once.
//
// cancel is never queued: Record settles it in the same compare-and-set
// that stores it. A queued target ends cancelled at once (and the cancel
// succeeded); a running sequence is refused (ErrCancelRefused), as is an
// id the user has nothing queued or running under. A running job is
// marked CancelledBy and the cancel waits, unclaimable, until the job
// ends: the ledger then ends the cancel with the job's progress, in the
// same write that ends the job (Finish, or Claim and Requeue for a job
// whose executor died or stopped).
//
// Results follow the outbox pattern inside the entry: Finish stores the
// outcome on the entry (only if the caller still runs it), the caller
// publishes the result and the audit record (each deduplicated by
// Nats-Msg-Id), and the caller's next Claim removes it. An outcome stored
// but not published (a crash in between) is handed out again by the next
// Claim, to whichever instance owns the user then.
package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
)

// Errors of the ledger, wrapped with details.
var (
	// ErrBusy reports a user whose queue is full.
	ErrBusy = contract.NewKind(contract.ErrBusy, "ledger: queue is full")
	// ErrIDConflict reports a command id that the user already used for
	// another command or payload, or longer than DedupeWindow ago.
	ErrIDConflict = contract.NewKind(contract.ErrConflict, "ledger: command id already used")
	// ErrCancelRefused reports a cancel of a command that cannot be
	// cancelled (a running sequence, an ended command, a cancel).
	ErrCancelRefused = contract.NewKind(contract.ErrConflict, "ledger: command cannot be cancelled")
	// ErrStore reports a JetStream failure.
	ErrStore = contract.NewKind(contract.ErrUnavailable, "ledger: command queue (JetStream) unavailable")
)

// DedupeWindow is how long a command id returns its first ACK again.
const DedupeWindow = 10 * time.Minute

// maxWriteAttempts bounds the compare-and-set retries of one change.
const maxWriteAttempts = 64

// States of an entry besides the final contract.Status values.
const (
	StatusAccepted = "accepted"
	StatusRunning  = "running"
)

// Entry is one command in a user's queue, and the audit record of it.
type Entry struct {
	ID      string           `json:"id"`
	User    string           `json:"user"`
	UserID  int64            `json:"user_id,omitempty"`
	Command contract.Command `json:"command"`
	Payload json.RawMessage  `json:"payload"`
	// Operator is the identity the NATS server authenticated
	// (intake.Identity); OperatorName the display name the client chose.
	Operator     string `json:"operator,omitempty"`
	OperatorName string `json:"operator_name,omitempty"`
	Priority     int    `json:"priority"`
	// Digest identifies the payload (PayloadDigest): the same id with
	// another digest is a conflict.
	Digest string `json:"digest"`
	// Chosen is set when the requester chose the id (header or payload):
	// only such an id can name an older command.
	Chosen bool `json:"-"`
	// TraceParent is the W3C traceparent of the accepting span.
	TraceParent string `json:"trace_parent,omitempty"`
	TraceID     string `json:"trace_id,omitempty"`
	// Set by the ledger:
	Seq        int64     `json:"seq"`
	Position   int       `json:"position"`
	AcceptedAt time.Time `json:"accepted_at"`
	// Instance is the executor while the command runs or ran.
	Instance  string     `json:"instance,omitempty"`
	StartedAt *time.Time `json:"started_at,omitempty"`
	Attempts  int        `json:"attempts,omitempty"`
	// Cancels is, on a cancel, the id of the command it cancels.
	Cancels string `json:"cancels,omitempty"`
	// CancelledBy is, on a running job, the id of the cancel that asked
	// it to stop.
	CancelledBy string `json:"cancelled_by,omitempty"`
	// Ended is the outcome once the command ended; the entry stays in the
	// queue until its result is published.
	Ended *Ended `json:"ended,omitempty"`
}

// Ended is how a command ended.
type Ended struct {
	Status     contract.Status `json:"status"`
	Result     json.RawMessage `json:"result,omitempty"`
	Error      *contract.Error `json:"error,omitempty"`
	Steps      []contract.Step `json:"steps"`
	TraceID    string          `json:"trace_id,omitempty"`
	FinishedAt time.Time       `json:"finished_at"`
}

// IsJob reports whether the command runs as a background job beside the
// queue.
func (e Entry) IsJob() bool { return e.Command == contract.CmdForceBackfill }

// State is accepted, running, or the final status.
func (e Entry) State() string {
	switch {
	case e.Ended != nil:
		return string(e.Ended.Status)
	case e.Instance != "":
		return StatusRunning
	}
	return StatusAccepted
}

// queued reports whether e waits to run (a cancel never does: it waits
// only for the job it cancels).
func (e Entry) queued() bool {
	return e.Ended == nil && e.Instance == "" && e.Command != contract.CmdCancel
}

// waitingCancel reports whether e is a cancel waiting for its job to stop.
func (e Entry) waitingCancel() bool { return e.Ended == nil && e.Command == contract.CmdCancel }

// running reports whether e runs.
func (e Entry) running() bool { return e.Ended == nil && e.Instance != "" }

// Ack is the ACK of e.
func (e Entry) Ack() contract.Ack {
	return contract.Ack{ID: e.ID, User: e.User, Command: e.Command, Accepted: true, Position: e.Position}
}

// Result is the result of an ended entry.
func (e Entry) Result() contract.Result {
	r := contract.Result{ID: e.ID, User: e.User, Command: e.Command, AcceptedAt: e.AcceptedAt.UTC(), Steps: []contract.Step{}}
	if e.Ended != nil {
		r.Status, r.Result, r.Error, r.TraceID = e.Ended.Status, e.Ended.Result, e.Ended.Error, e.Ended.TraceID
		r.FinishedAt = e.Ended.FinishedAt.UTC()
		if e.Ended.Steps != nil {
			r.Steps = e.Ended.Steps
		}
	}
	if r.TraceID == "" {
		r.TraceID = e.TraceID
	}
	return r
}

// PayloadDigest is the digest of a command and its canonical payload.
func PayloadDigest(cmd contract.Command, payload []byte) string {
	h := sha256.New()
	h.Write([]byte(cmd))
	h.Write([]byte{0})
	h.Write(payload)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// Recent is an earlier acceptance of a command id: a command in the
// queue, one whose result is in VIGIL_RESULTS (ResultIndex.Settled), or
// an entry of Queue.Recent.
type Recent struct {
	ID         string           `json:"id"`
	Command    contract.Command `json:"command"`
	Digest     string           `json:"digest"`
	Position   int              `json:"position"`
	AcceptedAt time.Time        `json:"accepted_at"`
	// SettledAt is when the command left the queue.
	SettledAt *time.Time `json:"settled_at,omitempty"`
}

// expired reports whether r is neither accepted nor settled within
// DedupeWindow of now.
func (r Recent) expired(now time.Time) bool {
	return now.Sub(r.AcceptedAt) >= DedupeWindow && (r.SettledAt == nil || now.Sub(*r.SettledAt) >= DedupeWindow)
}

// repeats answers e, whose id was accepted before as r: r (the first ACK
// again) for the same command and payload within DedupeWindow,
// ErrIDConflict otherwise. Errors name only this user's command.
func (r Recent) repeats(e Entry, now time.Time) (*Recent, error) {
	switch {
	case r.Digest == "":
		return nil, fmt.Errorf("%w: %q is the id of a command of yours that has a result; use a new id", ErrIDConflict, e.ID)
	case r.Command != e.Command || r.Digest != e.Digest:
		return nil, fmt.Errorf("%w: %q is the id of your %s accepted at %s with another payload; use a new id",
			ErrIDConflict, e.ID, r.Command, r.AcceptedAt.Format(time.RFC3339))
	case now.Sub(r.AcceptedAt) >= DedupeWindow:
		return nil, fmt.Errorf("%w: %q was accepted more than %s ago; use a new id", ErrIDConflict, e.ID, DedupeWindow)
	}
	return &r, nil
}

// Ledger reads and writes VIGIL_QUEUE.
type Ledger struct {
	js       jetstream.JetStream
	kv       jetstream.KeyValue
	now      func() time.Time
	onChange func(user string)
	settled  func(ctx context.Context, user, id string, atLeast uint64) (Recent, bool, error)
	watcher  jetstream.KeyWatcher
	done     chan struct{}

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	q   Queue
	rev uint64
}

// Options tune a Ledger.
type Options struct {
	// OnChange is called (from the watch's goroutine) after a user's queue
	// changed, by any instance.
	OnChange func(user string)
	// Now is the clock (time.Now when nil; tests move it).
	Now func() time.Time
	// Settled looks user's command id up among the results in
	// VIGIL_RESULTS (ResultIndex.Settled), answering once it has read up
	// to sequence atLeast (the queue entry's SettledSeq). Record asks it
	// for an id the requester chose and for the target of a cancel when
	// the user's queue does not hold them. Nil: no id has a result.
	Settled func(ctx context.Context, user, id string, atLeast uint64) (Recent, bool, error)
}

// Open opens the bucket (natsx.EnsureControl creates it), loads every
// user's queue and watches the bucket until Stop or ctx ends.
func Open(ctx context.Context, js jetstream.JetStream, opts Options) (*Ledger, error) {
	kv, err := js.KeyValue(ctx, natsx.BucketQueue)
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w", ErrStore, natsx.BucketQueue, err)
	}
	l := &Ledger{js: js, kv: kv, now: opts.Now, onChange: opts.OnChange, settled: opts.Settled, cache: map[string]cached{}, done: make(chan struct{})}
	if l.now == nil {
		l.now = time.Now
	}
	if l.onChange == nil {
		l.onChange = func(string) {}
	}
	if l.watcher, err = kv.WatchAll(ctx); err != nil {
		return nil, fmt.Errorf("%w: watch %s: %w", ErrStore, natsx.BucketQueue, err)
	}
	loaded := make(chan struct{})
	go l.watch(loaded)
	select {
	case <-loaded:
		return l, nil
	case <-ctx.Done():
		_ = l.watcher.Stop()
		return nil, fmt.Errorf("%w: load %s: %w", ErrStore, natsx.BucketQueue, ctx.Err())
	}
}

// Stop ends the watch.
func (l *Ledger) Stop() {
	_ = l.watcher.Stop()
	<-l.done
}

// watch feeds the cache; loaded is closed once the initial values are in.
func (l *Ledger) watch(loaded chan struct{}) {
	defer close(l.done)
	initial := true
	for e := range l.watcher.Updates() {
		if e == nil {
			if initial {
				initial = false
				close(loaded)
			}
			continue
		}
		user, err := contract.UserFromStateKey(e.Key())
		if err != nil {
			continue
		}
		if l.has(user, e.Revision()) {
			continue // written by this instance: cached when written
		}
		var q Queue
		if e.Operation() == jetstream.KeyValuePut {
			if err := json.Unmarshal(e.Value(), &q); err != nil {
				continue
			}
		}
		if l.store(user, q, e.Revision()) && !initial {
			l.onChange(user)
		}
	}
	if initial {
		close(loaded)
	}
}

// has reports whether the cache holds user's queue at rev or newer.
func (l *Ledger) has(user string, rev uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.cache[user]
	return ok && c.rev >= rev
}

// store caches q at rev unless the cache holds a newer revision.
func (l *Ledger) store(user string, q Queue, rev uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.cache[user]; ok && c.rev >= rev {
		return false
	}
	l.cache[user] = cached{q: q, rev: rev}
	return true
}

// current returns user's queue from the cache, or from the bucket when
// fresh is set (after a lost compare-and-set) or the cache has none.
func (l *Ledger) current(ctx context.Context, user string, fresh bool) (Queue, uint64, error) {
	if !fresh {
		l.mu.Lock()
		c, ok := l.cache[user]
		l.mu.Unlock()
		if ok {
			return c.q, c.rev, nil
		}
	}
	e, err := natsx.KVGet(ctx, l.js, natsx.BucketQueue, contract.StateKey(user))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Queue{}, 0, nil
	}
	if err != nil {
		return Queue{}, 0, fmt.Errorf("%w: read queue of %s: %w", ErrStore, user, err)
	}
	var q Queue
	if err := json.Unmarshal(e.Value(), &q); err != nil {
		return Queue{}, 0, fmt.Errorf("%w: queue of %s is not a queue: %w", ErrStore, user, err)
	}
	l.store(user, q, e.Revision())
	return q, e.Revision(), nil
}

// update applies change to user's queue with compare-and-set, retrying on
// a concurrent write with the bucket's newest entry. change gets a copy it
// may modify and reports whether it changed anything; nothing is written
// when it did not or when it fails. It returns the queue as written (or
// as read).
func (l *Ledger) update(ctx context.Context, user string, change func(q *Queue) (bool, error)) (Queue, error) {
	for attempt := range maxWriteAttempts {
		q, rev, err := l.current(ctx, user, attempt > 0)
		if err != nil {
			return Queue{}, err
		}
		next := q.clone()
		changed, err := change(&next)
		if err != nil || !changed {
			return next, err
		}
		b, err := json.Marshal(next)
		if err != nil {
			return Queue{}, fmt.Errorf("%w: encode queue of %s: %w", ErrStore, user, err)
		}
		var newRev uint64
		if rev == 0 {
			newRev, err = l.kv.Create(ctx, contract.StateKey(user), b)
		} else {
			newRev, err = l.kv.Update(ctx, contract.StateKey(user), b, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return Queue{}, fmt.Errorf("%w: write queue of %s: %w", ErrStore, user, err)
		}
		l.store(user, next, newRev)
		return next, nil
	}
	return Queue{}, fmt.Errorf("%w: queue of %s: %d concurrent writes in a row", ErrStore, user, maxWriteAttempts)
}

// Record stores e as a queued command and returns its ACK with the queue
// position (the user's commands that will run before it), unless the user
// already used e.ID: then it returns the first ACK with duplicate true
// when the id was accepted within DedupeWindow for the same command and
// payload, and ErrIDConflict otherwise. A user with queueLimit queued
// commands gets ErrBusy and nothing is stored; pause and resume are never
// busy: a queued pause or resume is superseded by the new one (it ends
// cancelled, naming the new one).
//
// An id the queue entry does not hold is looked up among the results
// (Options.Settled) when the requester chose it, inside the
// compare-and-set: the entry read there says how far the lookup must
// have read (SettledSeq), and a command that leaves the queue after that
// read makes the write fail and the decision start again.
func (l *Ledger) Record(ctx context.Context, e Entry, queueLimit int) (ack contract.Ack, duplicate bool, err error) {
	now := l.now().UTC()
	e.Priority = e.Command.Priority()
	_, err = l.update(ctx, e.User, func(q *Queue) (bool, error) {
		ack, duplicate = contract.Ack{}, false
		q.Recent = slices.DeleteFunc(q.Recent, func(r Recent) bool { return r.expired(now) })
		known, err := q.known(e, now)
		if err == nil && known == nil && e.Chosen {
			known, err = l.settledBefore(ctx, e, q.SettledSeq, now)
		}
		if err != nil || known != nil {
			if known != nil {
				ack, duplicate = contract.Ack{ID: e.ID, User: e.User, Command: known.Command, Accepted: true, Position: known.Position}, true
			}
			return false, err
		}
		if err := q.admit(e, now, queueLimit); err != nil {
			return false, err
		}
		q.Seq++
		e.Seq, e.AcceptedAt, e.Position = q.Seq, now, q.position(e)
		if e.Command == contract.CmdCancel {
			e.Position = 0
			if err := q.cancel(&e, now, l.cancelTargetSettled(ctx, e, q)); err != nil {
				return false, err
			}
		}
		q.Items = append(q.Items, e)
		ack = e.Ack()
		return true, nil
	})
	if err != nil {
		return contract.Ack{}, false, err
	}
	return ack, duplicate, nil
}

// settledBefore answers e when its id named a command of the user that
// has a result (Recent.repeats), looked up up to sequence atLeast; nil
// when it names none.
func (l *Ledger) settledBefore(ctx context.Context, e Entry, atLeast uint64, now time.Time) (*Recent, error) {
	if l.settled == nil {
		return nil, nil
	}
	r, ok, err := l.settled(ctx, e.User, e.ID, atLeast)
	if err != nil {
		return nil, fmt.Errorf("%w: look up id %q: %w", ErrStore, e.ID, err)
	}
	if !ok {
		return nil, nil
	}
	return r.repeats(e, now)
}

// cancelTargetSettled reports whether e is a cancel whose target, not in
// q, has a result: the cancel is then refused as too late rather than as
// naming no command. A failed lookup reports false.
func (l *Ledger) cancelTargetSettled(ctx context.Context, e Entry, q *Queue) bool {
	var p contract.CancelPayload
	if l.settled == nil || json.Unmarshal(e.Payload, &p) != nil || p.ID == "" || q.find(p.ID) >= 0 {
		return false
	}
	_, ok, err := l.settled(ctx, e.User, p.ID, q.SettledSeq)
	return err == nil && ok
}

// Queue returns user's queue as this instance last saw it.
func (l *Ledger) Queue(user string) Queue {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cache[user].q.clone()
}

// UsersWithWork lists the users with unsettled commands.
func (l *Ledger) UsersWithWork() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var users []string
	for user, c := range l.cache {
		if len(c.q.Items) > 0 {
			users = append(users, user)
		}
	}
	slices.Sort(users)
	return users
}

// Depths returns the queue of every user with unsettled commands.
func (l *Ledger) Depths() map[string]contract.QueueDepth {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]contract.QueueDepth{}
	for user, c := range l.cache {
		if len(c.q.Items) == 0 {
			continue
		}
		var d contract.QueueDepth
		for _, e := range c.q.Items {
			switch {
			case e.queued():
				d.Queued++
			case e.running() && e.IsJob():
				d.Jobs++
			case e.running():
				d.Running, d.Executor = e.ID, e.Instance
			}
		}
		out[user] = d
	}
	return out
}
