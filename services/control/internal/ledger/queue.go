package ledger

// This file: a user's queue and the rules applied to it inside one
// compare-and-set (dedupe, admission, cancel, positions, forgetting).

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"vigil.dev/pkg/contract"
)

// Queue is a user's entry in VIGIL_QUEUE.
type Queue struct {
	// Seq is the last sequence number given to a command of the user.
	Seq int64 `json:"seq"`
	// Items are the commands not settled yet, in order of acceptance.
	Items []Entry `json:"items"`
	// SettledSeq is the VIGIL_RESULTS sequence of the newest result of a
	// command removed from the queue (forget): an id the queue does not
	// hold is looked up among the results read up to there.
	SettledSeq uint64 `json:"settled_seq,omitempty"`
	// Recent are the ids that vigil-control versions before SettledSeq
	// kept for DedupeWindow after acceptance or settlement; read until they
	// expire, never added to.
	Recent []Recent `json:"recent,omitempty"`
}

// clone copies q so that changing the copy's slices leaves q alone.
func (q Queue) clone() Queue {
	return Queue{Seq: q.Seq, Items: slices.Clone(q.Items), SettledSeq: q.SettledSeq, Recent: slices.Clone(q.Recent)}
}

// find returns the index of item id, or -1.
func (q *Queue) find(id string) int {
	return slices.IndexFunc(q.Items, func(e Entry) bool { return e.ID == id })
}

// known returns the earlier acceptance of e.ID, when the queue holds it,
// answered by Recent.repeats: e is a duplicate of it, or ErrIDConflict.
func (q *Queue) known(e Entry, now time.Time) (*Recent, error) {
	if i := q.find(e.ID); i >= 0 {
		it := q.Items[i]
		return Recent{ID: it.ID, Command: it.Command, Digest: it.Digest, Position: it.Position, AcceptedAt: it.AcceptedAt}.repeats(e, now)
	}
	if i := slices.IndexFunc(q.Recent, func(r Recent) bool { return r.ID == e.ID }); i >= 0 {
		return q.Recent[i].repeats(e, now)
	}
	return nil, nil
}

// collapses reports whether cmd is exempt from the queue bound: at most
// one pause or resume waits, a newer one supersedes it.
func collapses(cmd contract.Command) bool {
	return cmd == contract.CmdPause || cmd == contract.CmdResume
}

// admit checks the queue bound for e, or makes room for a pause or
// resume by superseding the one that waits. A cancel is never bound.
func (q *Queue) admit(e Entry, now time.Time, queueLimit int) error {
	if e.Command == contract.CmdCancel {
		return nil
	}
	if collapses(e.Command) {
		for i, it := range q.Items {
			if it.queued() && collapses(it.Command) {
				result, _ := json.Marshal(contract.CancelledResult{Cancelled: true, SupersededBy: e.ID})
				q.Items[i].Ended = &Ended{Status: contract.StatusCancelled, Result: result, Steps: []contract.Step{}, FinishedAt: now}
			}
		}
		return nil
	}
	queued := 0
	for _, it := range q.Items {
		if it.queued() && !collapses(it.Command) {
			queued++
		}
	}
	if queued >= queueLimit {
		return fmt.Errorf("%w: %s has %d queued commands, the limit is %d (pause and resume are always accepted)", ErrBusy, e.User, queued, queueLimit)
	}
	return nil
}

// cancel settles cancel c (not yet in q) against its target, the
// command c.Cancels of the same user: a queued target ends cancelled and c
// succeeds; a running job is marked to stop and c waits for it; anything
// else refuses c. targetSettled reports that a target the queue no
// longer holds has a result (Ledger.cancelTargetSettled). Errors name only
// the user's own commands.
func (q *Queue) cancel(c *Entry, now time.Time, targetSettled bool) error {
	var p contract.CancelPayload
	if err := json.Unmarshal(c.Payload, &p); err != nil || p.ID == "" {
		return contract.FieldError{Field: "id", Problem: "is required: the id of the command to cancel"}
	}
	c.Cancels = p.ID
	i := q.find(p.ID)
	if i >= 0 && q.Items[i].Ended != nil {
		return fmt.Errorf("%w: your %s %q has already ended; its result is on %s",
			ErrCancelRefused, q.Items[i].Command, p.ID, contract.ResultSubject(c.User, p.ID))
	}
	if i < 0 {
		if r := slices.IndexFunc(q.Recent, func(r Recent) bool { return r.ID == p.ID }); r >= 0 {
			return fmt.Errorf("%w: your %s %q has already ended; its result is on %s",
				ErrCancelRefused, q.Recent[r].Command, p.ID, contract.ResultSubject(c.User, p.ID))
		}
		if targetSettled {
			return fmt.Errorf("%w: your command %q has already ended; its result is on %s",
				ErrCancelRefused, p.ID, contract.ResultSubject(c.User, p.ID))
		}
		return contract.FieldError{Field: "id", Problem: fmt.Sprintf("%q is not a queued or running command of yours", p.ID)}
	}
	t := &q.Items[i]
	switch {
	case t.Command == contract.CmdCancel:
		return fmt.Errorf("%w: %q is a cancel waiting for its job to stop", ErrCancelRefused, p.ID)
	case t.queued():
		result, _ := json.Marshal(contract.CancelledResult{Cancelled: true, CancelledBy: c.ID})
		t.Ended = &Ended{Status: contract.StatusCancelled, Result: result, Steps: []contract.Step{}, FinishedAt: now}
		c.Ended = cancelSucceeded(p.ID, nil, now)
	case !t.IsJob():
		return fmt.Errorf("%w: your %s %q is running a sequence and cannot be cancelled: its steps are confirmed one after the other and it ends by itself",
			ErrCancelRefused, t.Command, p.ID)
	case t.CancelledBy != "":
		return fmt.Errorf("%w: your %s %q is already being cancelled by %q", ErrCancelRefused, t.Command, p.ID, t.CancelledBy)
	default:
		t.CancelledBy = c.ID
	}
	return nil
}

// cancelSucceeded is the outcome of a cancel that ended command id,
// with the job's progress when it ran.
func cancelSucceeded(id string, progress json.RawMessage, now time.Time) *Ended {
	result, _ := json.Marshal(contract.CancelResult{Cancelled: true, ID: id, Progress: progress})
	return &Ended{Status: contract.StatusSucceeded, Result: result, Steps: []contract.Step{}, FinishedAt: now}
}

// settleCancels ends the cancels waiting for a job that is no longer
// running: a job that ended cancelled by it makes it succeed with the
// job's progress; a job put back in the queue (its executor died or shut
// down) ends cancelled at once; a job that ended otherwise first makes
// it fail. It reports whether it changed anything.
func (q *Queue) settleCancels(now time.Time) bool {
	changed := false
	for ci := range q.Items {
		c := q.Items[ci]
		if !c.waitingCancel() {
			continue
		}
		i := q.find(c.Cancels)
		if i >= 0 && q.Items[i].running() {
			continue
		}
		changed = true
		if i >= 0 && q.Items[i].queued() {
			result, _ := json.Marshal(contract.BackfillCancelledResult{CancelledResult: contract.CancelledResult{Cancelled: true, CancelledBy: c.ID}})
			q.Items[i].Ended = &Ended{Status: contract.StatusCancelled, Result: result, Steps: []contract.Step{}, FinishedAt: now}
		}
		if i < 0 {
			e := contract.Error{Code: contract.CodeConflict, Message: fmt.Sprintf("%q ended before the cancel reached it", c.Cancels)}
			q.Items[ci].Ended = &Ended{Status: contract.StatusFailed, Error: &e, Steps: []contract.Step{}, FinishedAt: now}
			continue
		}
		t := q.Items[i]
		if t.Ended.Status != contract.StatusCancelled {
			e := contract.Error{Code: contract.CodeConflict, Message: fmt.Sprintf("your %s %q ended %s before the cancel reached it", t.Command, t.ID, t.Ended.Status)}
			q.Items[ci].Ended = &Ended{Status: contract.StatusFailed, Error: &e, Steps: []contract.Step{}, FinishedAt: now}
			continue
		}
		q.Items[ci].Ended = cancelSucceeded(t.ID, progressOf(t.Ended.Result), now)
	}
	return changed
}

// progressOf is the "progress" object of a job's result, or nil.
func progressOf(result json.RawMessage) json.RawMessage {
	var r struct {
		Progress json.RawMessage `json:"progress"`
	}
	if json.Unmarshal(result, &r) != nil {
		return nil
	}
	return r.Progress
}

// position is how many of the user's commands run before e: the queued
// ones of the same or a higher priority and the running queued command.
func (q *Queue) position(e Entry) int {
	n := 0
	for _, it := range q.Items {
		switch {
		case it.queued() && it.Priority >= e.Priority:
			n++
		case it.running() && !it.IsJob():
			n++
		}
	}
	return n
}

// Settled is an ended command whose result is published, at sequence
// ResultSeq of VIGIL_RESULTS.
type Settled struct {
	ID        string
	ResultSeq uint64
}

// forget removes the ended entries settled and raises SettledSeq to their
// results: a reused id is then found in the queue or among the results
// read up to SettledSeq (Options.Settled).
func (q *Queue) forget(settled []Settled) bool {
	n := len(q.Items)
	q.Items = slices.DeleteFunc(q.Items, func(e Entry) bool {
		i := slices.IndexFunc(settled, func(s Settled) bool { return s.ID == e.ID })
		if e.Ended == nil || i < 0 {
			return false
		}
		q.SettledSeq = max(q.SettledSeq, settled[i].ResultSeq)
		return true
	})
	return len(q.Items) != n
}
