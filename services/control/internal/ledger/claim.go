package ledger

// This file: executors claim, finish and requeue entries.

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"vigil.dev/pkg/contract"
)

// ClaimOptions tune Claim.
type ClaimOptions struct {
	// Self is the claiming instance.
	Self string
	// SelfRunning are the ids of the commands and jobs Self runs: a
	// running entry of Self's that is not among them is an orphan.
	SelfRunning []string
	// Members are the live control instances; a running entry of another
	// instance that is not among them is an orphan.
	Members []string
	// MaxJobs bounds the user's running background jobs.
	MaxJobs int
	// MaxAttempts bounds how often an orphaned job is re-run.
	MaxAttempts int
	// OrphanError is the error of a running command whose executor died.
	OrphanError func(Entry) contract.Error
	// Settled are ended entries whose result the caller published: the
	// claim removes them.
	Settled []Settled
}

// alive reports whether the executor of running entry e lives.
func (o ClaimOptions) alive(e Entry) bool {
	if e.Instance == o.Self {
		return slices.Contains(o.SelfRunning, e.ID)
	}
	return slices.Contains(o.Members, e.Instance)
}

// Claimed is what one Claim found.
type Claimed struct {
	// Next is the command the caller runs now (its entry is running with
	// the caller as executor), or nil.
	Next *Entry
	// Ended are the entries with an outcome whose result is not published
	// yet (cancelled, superseded, failed because their executor died, or
	// finished by an executor that died before it published): the caller
	// publishes them and passes them in the next claim's Settled.
	Ended []Entry
	// Requeued are orphaned jobs put back in the queue to run again.
	Requeued []string
}

// Claim removes opts.Settled from user's queue, fails the commands whose
// executor died (jobs are requeued while attempts remain) and, unless a
// live executor runs one of the user's queued commands, marks the
// highest-priority queued command running for opts.Self. Background jobs
// are claimed only while fewer than MaxJobs run. All of it is one
// compare-and-set write, none when nothing changes.
func (l *Ledger) Claim(ctx context.Context, user string, opts ClaimOptions) (Claimed, error) {
	var out Claimed
	now := l.now().UTC()
	_, err := l.update(ctx, user, func(q *Queue) (bool, error) {
		out = Claimed{}
		changed := q.forget(opts.Settled)
		queueBusy, jobs := false, 0
		for i, e := range q.Items {
			switch {
			case !e.running():
			case opts.alive(e) && e.IsJob():
				jobs++
			case opts.alive(e):
				queueBusy = true
			case e.IsJob() && e.Attempts < opts.MaxAttempts:
				q.Items[i].Instance, q.Items[i].StartedAt = "", nil
				out.Requeued = append(out.Requeued, e.ID)
				changed = true
			default:
				oe := opts.OrphanError(e)
				q.Items[i].Ended = &Ended{Status: contract.StatusFailed, Error: &oe, FinishedAt: now}
				changed = true
			}
		}
		if q.settleCancels(now) {
			changed = true
		}
		for _, e := range q.Items {
			if e.Ended != nil {
				out.Ended = append(out.Ended, e)
			}
		}
		if queueBusy {
			return changed, nil
		}
		next := -1
		for i, e := range q.Items {
			if !e.queued() || (e.IsJob() && jobs >= opts.MaxJobs) {
				continue
			}
			if next < 0 || e.Priority > q.Items[next].Priority {
				next = i
			}
		}
		if next < 0 {
			return changed, nil
		}
		it := &q.Items[next]
		it.Instance, it.StartedAt = opts.Self, &now
		it.Attempts++
		claimed := *it
		out.Next = &claimed
		return true, nil
	})
	if err != nil {
		return Claimed{}, fmt.Errorf("claim for %s: %w", user, err)
	}
	return out, nil
}

// Outcome is how a command ended, as its executor reports it.
type Outcome struct {
	Status contract.Status
	// Result is the command's result object (may be nil).
	Result json.RawMessage
	Error  *contract.Error
	Steps  []contract.Step
	// TraceID of the command's trace, when it has one.
	TraceID string
}

func (o Outcome) ended(now time.Time) *Ended {
	steps := o.Steps
	if steps == nil {
		steps = []contract.Step{}
	}
	return &Ended{Status: o.Status, Result: o.Result, Error: o.Error, Steps: steps, TraceID: o.TraceID, FinishedAt: now}
}

// Finish stores the outcome of command id of user, which self runs, and
// returns the ended entry, whose result the caller publishes before it
// passes id in a Claim's Settled. ok is false when the command no longer
// runs for self (another instance took self for dead and failed it): then
// nothing is written and self must not publish.
func (l *Ledger) Finish(ctx context.Context, user, id, self string, o Outcome) (ended Entry, ok bool, err error) {
	now := l.now().UTC()
	_, err = l.update(ctx, user, func(q *Queue) (bool, error) {
		ok = false
		i := q.find(id)
		if i < 0 || !q.Items[i].running() || q.Items[i].Instance != self {
			return false, nil
		}
		q.Items[i].Ended = o.ended(now)
		ended, ok = q.Items[i], true
		q.settleCancels(now)
		return true, nil
	})
	if err != nil {
		return Entry{}, false, fmt.Errorf("finish %s: %w", id, err)
	}
	return ended, ok, nil
}

// FinishQueued ends the user's queued commands of command cmd accepted
// before seq (e.g. the backfills a pause cancels) with outcome o; the
// user's next Claim hands them out to be published.
func (l *Ledger) FinishQueued(ctx context.Context, user string, cmd contract.Command, beforeSeq int64, o Outcome) (int, error) {
	now := l.now().UTC()
	n := 0
	_, err := l.update(ctx, user, func(q *Queue) (bool, error) {
		n = 0
		for i, e := range q.Items {
			if e.queued() && e.Command == cmd && e.Seq < beforeSeq {
				q.Items[i].Ended = o.ended(now)
				n++
			}
		}
		return n > 0, nil
	})
	if err != nil {
		return 0, fmt.Errorf("finish queued %s of %s: %w", cmd, user, err)
	}
	return n, nil
}

// Requeue puts job id of user, which self runs, back in the queue (e.g. on
// a clean shutdown, so another instance runs it again).
func (l *Ledger) Requeue(ctx context.Context, user, id, self string) error {
	_, err := l.update(ctx, user, func(q *Queue) (bool, error) {
		i := q.find(id)
		if i < 0 || !q.Items[i].running() || q.Items[i].Instance != self {
			return false, nil
		}
		q.Items[i].Instance, q.Items[i].StartedAt = "", nil
		q.settleCancels(l.now().UTC())
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("requeue %s: %w", id, err)
	}
	return nil
}
