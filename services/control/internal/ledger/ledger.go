// Package ledger is vigil-control's durable command queue: the Postgres
// table command_log holds every accepted command from the moment before its
// ACK until its result is published, and every control instance works
// through it.
//
// A user's queue is the user's rows with status accepted, ordered by
// priority (highest first), then by seq (FIFO). A row with status running
// and a command other than force-backfill is the user's queue lock: while it
// exists no other command of the user is claimed. force-backfill rows run
// as background jobs beside the queue. All changes to a user's rows happen
// in transactions that hold a per-user advisory lock, so several control
// instances never claim two commands of one user at once. Record and the
// usual Claim are one round trip each: the database functions
// vigil_record_command and vigil_claim_command (migration 00003) run the
// whole transaction server side.
//
// Results follow the outbox pattern: Finish stores the result, the caller
// publishes it and then calls MarkPublished; a result stored but not
// published (a crash in between) is found by Unpublished and published
// again (the stream drops the duplicate by its Nats-Msg-Id).
package ledger

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"vigil.dev/pkg/contract"
)

// Errors of the ledger, wrapped with details.
var (
	// ErrBusy reports a user whose queue is full.
	ErrBusy = contract.NewKind(contract.ErrBusy, "ledger: queue is full")
	// ErrIDConflict reports a command id that is already taken by another
	// command, or by one accepted longer than DedupeWindow ago.
	ErrIDConflict = contract.NewKind(contract.ErrConflict, "ledger: command id already used")
	// ErrStore reports a database failure.
	ErrStore = contract.NewKind(contract.ErrUnavailable, "ledger: command log unavailable")
)

// DedupeWindow is how long a command id returns its first ACK again.
const DedupeWindow = 10 * time.Minute

// Statuses of a row besides the final contract.Status values.
const (
	StatusAccepted = "accepted"
	StatusRunning  = "running"
)

// Entry is one command as recorded in command_log.
type Entry struct {
	ID       string
	User     string
	UserID   int64
	Command  contract.Command
	Payload  json.RawMessage
	Operator string
	Priority int
	// TraceParent is the W3C traceparent of the accepting span.
	TraceParent string
	TraceID     string
	// Set by the ledger:
	Status     string
	Instance   string
	Attempts   int
	Seq        int64
	AcceptedAt time.Time
}

// IsJob reports whether the command runs as a background job beside the
// queue.
func (e Entry) IsJob() bool { return e.Command == contract.CmdForceBackfill }

// Ledger reads and writes command_log.
type Ledger struct {
	pool *pgxpool.Pool
}

// New returns a ledger on pool.
func New(pool *pgxpool.Pool) *Ledger { return &Ledger{pool: pool} }

// lockUser takes the transaction-scoped advisory lock of user's queue.
func lockUser(ctx context.Context, tx pgx.Tx, user string) error {
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('vigil-control/' || $1, 0))`, user)
	return err
}

// Record stores e as a queued command and returns its ACK with the queue
// position (the user's commands that will run before it), unless e.ID is
// already recorded: then it returns the first ACK with duplicate true when
// the id was accepted within DedupeWindow for the same user and command,
// and ErrIDConflict otherwise. A user with queueLimit queued commands gets
// ErrBusy and nothing is stored.
func (l *Ledger) Record(ctx context.Context, e Entry, queueLimit int) (ack contract.Ack, duplicate bool, err error) {
	template, err := json.Marshal(contract.Ack{ID: e.ID, User: e.User, Command: e.Command, Accepted: true})
	if err != nil {
		return contract.Ack{}, false, fmt.Errorf("%w: record %s: %w", ErrStore, e.ID, err)
	}
	var outcome, knownUser, knownCommand string
	var ackJSON []byte
	var queued int
	var recent bool
	err = l.pool.QueryRow(ctx, `SELECT * FROM vigil_record_command($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
		e.ID, e.User, e.UserID, string(e.Command), string(e.Payload), e.Operator, e.Priority, e.TraceID, e.TraceParent,
		string(template), queueLimit, DedupeWindow.Seconds()).Scan(&outcome, &ackJSON, &queued, &knownUser, &knownCommand, &recent)
	if err != nil {
		return contract.Ack{}, false, fmt.Errorf("%w: record %s: %w", ErrStore, e.ID, err)
	}
	switch outcome {
	case "busy":
		return contract.Ack{}, false, fmt.Errorf("%w: %s has %d queued commands, the limit is %d", ErrBusy, e.User, queued, queueLimit)
	case "known":
		switch {
		case knownUser != e.User || knownCommand != string(e.Command):
			return contract.Ack{}, false, fmt.Errorf("%w: %q is the id of %s for %s", ErrIDConflict, e.ID, knownCommand, knownUser)
		case !recent:
			return contract.Ack{}, false, fmt.Errorf("%w: %q was accepted more than %s ago; use a new id", ErrIDConflict, e.ID, DedupeWindow)
		}
		duplicate = true
	}
	if err := json.Unmarshal(ackJSON, &ack); err != nil {
		return contract.Ack{}, false, fmt.Errorf("%w: stored ack of %s: %w", ErrStore, e.ID, err)
	}
	return ack, duplicate, nil
}

// ClaimOptions tune Claim.
type ClaimOptions struct {
	// Self is the claiming instance.
	Self string
	// SelfRunning are the ids of the commands and jobs Self runs: a
	// running row of Self's that is not among them is an orphan.
	SelfRunning []string
	// Members are the live control instances; a running row of another
	// instance that is not among them is an orphan.
	Members []string
	// MaxJobs bounds the user's running background jobs.
	MaxJobs int
	// MaxAttempts bounds how often an orphaned job is re-run.
	MaxAttempts int
	// OrphanError is the error of a running command whose executor died.
	OrphanError func(Entry) contract.Error
}

// Claimed is what one Claim found.
type Claimed struct {
	// Next is the command the caller runs now (its row is running with
	// the caller as executor), or nil.
	Next *Entry
	// Orphans are results of commands whose executor died, failed by this
	// claim; the caller publishes them.
	Orphans []contract.Result
	// Requeued are orphaned jobs put back in the queue to run again.
	Requeued []string
}

// alive reports whether the executor of running command id lives.
func (o ClaimOptions) alive(instance, id string) bool {
	if instance == o.Self {
		return slices.Contains(o.SelfRunning, id)
	}
	return slices.Contains(o.Members, instance)
}

// Claim takes the next command of user's queue: it first fails the
// commands whose executor died (jobs are requeued while attempts remain),
// then, unless another live executor is running one of the user's queued
// commands, marks the highest-priority queued command running for
// opts.Self. Background jobs are claimed only while fewer than MaxJobs run.
//
// The usual case, no dead executor, is one round trip (the function
// vigil_claim_command); only when it reports an orphan does Claim settle
// the orphans and claim in a transaction of its own.
func (l *Ledger) Claim(ctx context.Context, user string, opts ClaimOptions) (Claimed, error) {
	next, dead, err := l.claimFast(ctx, user, opts)
	if err != nil {
		return Claimed{}, fmt.Errorf("%w: claim for %s: %w", ErrStore, user, err)
	}
	if !dead {
		return Claimed{Next: next}, nil
	}
	return l.claimSettlingOrphans(ctx, user, opts)
}

// claimFast claims without touching orphans: dead is true (and nothing
// changed) when a running command of user has a dead executor.
func (l *Ledger) claimFast(ctx context.Context, user string, opts ClaimOptions) (next *Entry, dead bool, err error) {
	var outcome string
	var e Entry
	var id, token, command, operator, traceParent, traceID, status, instance *string
	var userID, seq *int64
	var priority, attempts *int
	var acceptedAt *time.Time
	selfRunning, members := opts.SelfRunning, opts.Members
	if selfRunning == nil {
		selfRunning = []string{}
	}
	if members == nil {
		members = []string{}
	}
	err = l.pool.QueryRow(ctx, `SELECT * FROM vigil_claim_command($1, $2, $3, $4, $5)`,
		user, opts.Self, selfRunning, members, opts.MaxJobs).Scan(&outcome, &id, &token, &userID, &command,
		&e.Payload, &operator, &priority, &traceParent, &traceID, &status, &instance, &attempts, &seq, &acceptedAt)
	if err != nil {
		return nil, false, err
	}
	switch outcome {
	case "dead":
		return nil, true, nil
	case "claimed":
		e.ID, e.User, e.UserID, e.Command, e.Operator = *id, *token, *userID, contract.Command(*command), *operator
		e.Priority, e.TraceParent, e.TraceID, e.Status, e.Instance = *priority, *traceParent, *traceID, *status, *instance
		e.Attempts, e.Seq, e.AcceptedAt = *attempts, *seq, *acceptedAt
		return &e, false, nil
	}
	return nil, false, nil
}

// claimSettlingOrphans is Claim in a client-side transaction that fails or
// requeues the commands of dead executors first.
func (l *Ledger) claimSettlingOrphans(ctx context.Context, user string, opts ClaimOptions) (Claimed, error) {
	var out Claimed
	err := pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		out = Claimed{}
		if err := lockUser(ctx, tx, user); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, selectEntry+` WHERE user_token = $1 AND status = 'running'`, user)
		if err != nil {
			return err
		}
		running, err := pgx.CollectRows(rows, scanEntry)
		if err != nil {
			return err
		}
		queueBusy, jobs := false, 0
		for _, e := range running {
			if opts.alive(e.Instance, e.ID) {
				if e.IsJob() {
					jobs++
				} else {
					queueBusy = true
				}
				continue
			}
			if e.IsJob() && e.Attempts < opts.MaxAttempts {
				if _, err := tx.Exec(ctx, `
					UPDATE command_log SET status = 'accepted', control_instance = NULL, started_at = NULL
					WHERE id = $1`, e.ID); err != nil {
					return err
				}
				out.Requeued = append(out.Requeued, e.ID)
				continue
			}
			oe := opts.OrphanError(e)
			res, err := finishRow(ctx, tx, e.ID, `id = $1 AND status = 'running'`, nil, Outcome{Status: contract.StatusFailed, Error: &oe})
			if err != nil {
				return err
			}
			out.Orphans = append(out.Orphans, res...)
		}
		if queueBusy {
			return nil
		}
		rows, err = tx.Query(ctx, selectEntry+`
			WHERE user_token = $1 AND status = 'accepted' AND ($2 OR command <> 'force-backfill')
			ORDER BY priority DESC, seq LIMIT 1 FOR UPDATE`, user, jobs < opts.MaxJobs)
		if err != nil {
			return err
		}
		next, err := pgx.CollectRows(rows, scanEntry)
		if err != nil || len(next) == 0 {
			return err
		}
		e := next[0]
		if err := tx.QueryRow(ctx, `
			UPDATE command_log SET status = 'running', control_instance = $2, started_at = clock_timestamp(), attempts = attempts + 1
			WHERE id = $1 RETURNING attempts`, e.ID, opts.Self).Scan(&e.Attempts); err != nil {
			return err
		}
		e.Status, e.Instance = StatusRunning, opts.Self
		out.Next = &e
		return nil
	})
	if err != nil {
		return Claimed{}, fmt.Errorf("%w: claim for %s: %w", ErrStore, user, err)
	}
	return out, nil
}

const selectEntry = `
	SELECT id, user_token, coalesce(user_id, 0), command, payload, operator, coalesce(priority, 0),
	       coalesce(trace_parent, ''), coalesce(trace_id, ''), status, coalesce(control_instance, ''),
	       attempts, seq, accepted_at
	FROM command_log`

func scanEntry(row pgx.CollectableRow) (Entry, error) {
	var e Entry
	var command string
	err := row.Scan(&e.ID, &e.User, &e.UserID, &command, &e.Payload, &e.Operator, &e.Priority,
		&e.TraceParent, &e.TraceID, &e.Status, &e.Instance, &e.Attempts, &e.Seq, &e.AcceptedAt)
	e.Command = contract.Command(command)
	return e, err
}

// Outcome is how a command ended.
type Outcome struct {
	Status contract.Status
	// Result is the command's result object (may be nil).
	Result json.RawMessage
	Error  *contract.Error
	Steps  []contract.Step
	// TraceID of the command's trace, when it has one.
	TraceID string
}

// Finish records the outcome of command id, which self runs, and returns the
// result to publish. ok is false when the command is no longer running for
// self (another instance declared self dead and finished it): then nothing
// is written and self must not publish.
func (l *Ledger) Finish(ctx context.Context, id, self string, o Outcome) (res contract.Result, ok bool, err error) {
	results, err := finishRow(ctx, l.pool, id, `id = $1 AND status = 'running' AND control_instance = $7`, []any{self}, o)
	if err != nil {
		return contract.Result{}, false, fmt.Errorf("%w: finish %s: %w", ErrStore, id, err)
	}
	if len(results) == 0 {
		return contract.Result{}, false, nil
	}
	return results[0], true, nil
}

// FinishQueued ends the user's queued commands of command cmd accepted
// before seq (e.g. the backfills a pause cancels) with outcome o and returns
// their results.
func (l *Ledger) FinishQueued(ctx context.Context, user string, cmd contract.Command, beforeSeq int64, o Outcome) ([]contract.Result, error) {
	results, err := finishRow(ctx, l.pool, user,
		`user_token = $1 AND status = 'accepted' AND command = $7 AND seq < $8`, []any{string(cmd), beforeSeq}, o)
	if err != nil {
		return nil, fmt.Errorf("%w: finish queued %s of %s: %w", ErrStore, cmd, user, err)
	}
	return results, nil
}

type execer interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// finishRow sets the final outcome on the rows matching where (in which $1
// is key and $7... are extra; $2..$6 hold the outcome) and returns their
// results.
func finishRow(ctx context.Context, q execer, key, where string, extra []any, o Outcome) ([]contract.Result, error) {
	if o.Steps == nil {
		o.Steps = []contract.Step{}
	}
	steps, err := json.Marshal(o.Steps)
	if err != nil {
		return nil, err
	}
	var errJSON, resultJSON *string
	if o.Error != nil {
		b, err := json.Marshal(o.Error)
		if err != nil {
			return nil, err
		}
		s := string(b)
		errJSON = &s
	}
	if len(o.Result) > 0 {
		s := string(o.Result)
		resultJSON = &s
	}
	args := append([]any{key, string(o.Status), resultJSON, errJSON, string(steps), o.TraceID}, extra...)
	rows, err := q.Query(ctx, `
		UPDATE command_log
		SET status = $2, result = $3, error = $4, steps = $5,
		    trace_id = coalesce(nullif($6, ''), trace_id),
		    started_at = coalesce(started_at, clock_timestamp()), finished_at = clock_timestamp()
		WHERE `+where+`
		RETURNING `+resultColumns, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanResult)
}

const resultColumns = `id, user_token, command, status, result, error, steps, accepted_at, finished_at, coalesce(trace_id, '')`

func scanResult(row pgx.CollectableRow) (contract.Result, error) {
	var r contract.Result
	var command, status string
	var result, errJSON, steps []byte
	if err := row.Scan(&r.ID, &r.User, &command, &status, &result, &errJSON, &steps, &r.AcceptedAt, &r.FinishedAt, &r.TraceID); err != nil {
		return r, err
	}
	r.Command, r.Status = contract.Command(command), contract.Status(status)
	r.AcceptedAt, r.FinishedAt = r.AcceptedAt.UTC(), r.FinishedAt.UTC()
	if len(result) > 0 {
		r.Result = result
	}
	if len(errJSON) > 0 {
		r.Error = &contract.Error{}
		if err := json.Unmarshal(errJSON, r.Error); err != nil {
			return r, fmt.Errorf("stored error of %s: %w", r.ID, err)
		}
	}
	r.Steps = []contract.Step{}
	if len(steps) > 0 {
		if err := json.Unmarshal(steps, &r.Steps); err != nil {
			return r, fmt.Errorf("stored steps of %s: %w", r.ID, err)
		}
	}
	return r, nil
}

// Requeue puts job id, which self runs, back in the queue (e.g. on a clean
// shutdown, so another instance runs it again).
func (l *Ledger) Requeue(ctx context.Context, id, self string) error {
	_, err := l.pool.Exec(ctx, `
		UPDATE command_log SET status = 'accepted', control_instance = NULL, started_at = NULL
		WHERE id = $1 AND status = 'running' AND control_instance = $2`, id, self)
	if err != nil {
		return fmt.Errorf("%w: requeue %s: %w", ErrStore, id, err)
	}
	return nil
}

// Unpublished returns user's finished results that are not yet published,
// oldest first.
func (l *Ledger) Unpublished(ctx context.Context, user string) ([]contract.Result, error) {
	rows, err := l.pool.Query(ctx, `SELECT `+resultColumns+` FROM command_log
		WHERE user_token = $1 AND finished_at IS NOT NULL AND published_at IS NULL
		ORDER BY finished_at`, user)
	if err != nil {
		return nil, fmt.Errorf("%w: unpublished of %s: %w", ErrStore, user, err)
	}
	results, err := pgx.CollectRows(rows, scanResult)
	if err != nil {
		return nil, fmt.Errorf("%w: unpublished of %s: %w", ErrStore, user, err)
	}
	return results, nil
}

// MarkPublished records that the result of id reached its stream.
func (l *Ledger) MarkPublished(ctx context.Context, id string) error {
	if _, err := l.pool.Exec(ctx, `UPDATE command_log SET published_at = clock_timestamp() WHERE id = $1`, id); err != nil {
		return fmt.Errorf("%w: mark %s published: %w", ErrStore, id, err)
	}
	return nil
}

// UsersWithWork lists the users with queued or running commands or
// unpublished results.
func (l *Ledger) UsersWithWork(ctx context.Context) ([]string, error) {
	rows, err := l.pool.Query(ctx, `
		SELECT user_token FROM command_log WHERE status IN ('accepted', 'running')
		UNION
		SELECT user_token FROM command_log WHERE finished_at IS NOT NULL AND published_at IS NULL`)
	if err != nil {
		return nil, fmt.Errorf("%w: users with work: %w", ErrStore, err)
	}
	users, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("%w: users with work: %w", ErrStore, err)
	}
	return users, nil
}

// Depth is a user's queue at one moment.
type Depth struct {
	Queued int `json:"queued"`
	// Running is the id of the queued command being executed, or "".
	Running  string `json:"running,omitempty"`
	Executor string `json:"executor,omitempty"`
	Jobs     int    `json:"jobs"`
}

// Depths returns the queue of every user with unfinished commands.
func (l *Ledger) Depths(ctx context.Context) (map[string]Depth, error) {
	rows, err := l.pool.Query(ctx, `
		SELECT user_token,
		       count(*) FILTER (WHERE status = 'accepted'),
		       coalesce(max(id) FILTER (WHERE status = 'running' AND command <> 'force-backfill'), ''),
		       coalesce(max(control_instance) FILTER (WHERE status = 'running' AND command <> 'force-backfill'), ''),
		       count(*) FILTER (WHERE status = 'running' AND command = 'force-backfill')
		FROM command_log WHERE status IN ('accepted', 'running')
		GROUP BY user_token`)
	if err != nil {
		return nil, fmt.Errorf("%w: depths: %w", ErrStore, err)
	}
	defer rows.Close()
	out := map[string]Depth{}
	for rows.Next() {
		var user string
		var d Depth
		if err := rows.Scan(&user, &d.Queued, &d.Running, &d.Executor, &d.Jobs); err != nil {
			return nil, fmt.Errorf("%w: depths: %w", ErrStore, err)
		}
		out[user] = d
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%w: depths: %w", ErrStore, err)
	}
	return out, nil
}
