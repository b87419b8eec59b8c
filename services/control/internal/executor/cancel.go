package executor

// This file: background jobs and cancels: jobs run beside the queue, a
// pause cancels them on every instance (vigil.ctl.cancel.<user>), a
// cancel stops a marked job, and commands that ended without running get
// their results at once.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/control/internal/ledger"
	"vigil.dev/services/control/internal/sequences"
)

// CancelSubjects cancels a user's background jobs on every instance:
// vigil.ctl.cancel.<user>, body = the id of the pause.
const CancelSubjects = "vigil.ctl.cancel.*"

// CancelSubject is vigil.ctl.cancel.<user>.
func CancelSubject(user string) string { return "vigil.ctl.cancel." + user }

// startJob runs a background job beside the queue.
func (e *Executor) startJob(en ledger.Entry) {
	ctx, t := e.register(en)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		out, traceID := e.run(ctx, en)
		if errors.Is(context.Cause(ctx), errShutdown) && out.Status != contract.StatusSucceeded && e.ctx.Err() == nil {
			if err := e.ledger.Requeue(e.ctx, en.User, en.ID, e.members.Self()); err != nil {
				e.logErr("job not requeued; the next owner re-runs it", err, "id", en.ID)
			}
			e.unregister(t)
			return
		}
		e.finish(t, out, traceID)
	}()
}

// cancelJobs cancels the user's background jobs for pause: the running ones
// on every instance, and the queued ones accepted before the pause.
func (e *Executor) cancelJobs(ctx context.Context, pause ledger.Entry) error {
	e.cancelLocalJobs(pause.User, nil, &sequences.CancelledError{By: pause.ID, Command: contract.CmdPause})
	if err := e.nc.Publish(CancelSubject(pause.User), []byte(pause.ID)); err != nil {
		return fmt.Errorf("executor: cancel jobs of %s: %w", pause.User, err)
	}
	result, _ := json.Marshal(contract.BackfillCancelledResult{CancelledResult: contract.CancelledResult{CancelledBy: pause.ID}})
	_, err := e.ledger.FinishQueued(ctx, pause.User, contract.CmdForceBackfill, pause.Seq,
		ledger.Outcome{Status: contract.StatusCancelled, Result: result})
	return err
}

// cancelLocalJobs cancels the user's jobs running here (only those of ids
// when ids is not nil) with cause.
func (e *Executor) cancelLocalJobs(user string, ids []string, cause error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, t := range e.tasks {
		if t.entry.User == user && t.entry.IsJob() && (ids == nil || slices.Contains(ids, t.entry.ID)) {
			t.cancel(cause)
		}
	}
}

// stopCancelledJobs stops the jobs of user running here whose ledger
// entry a cancel marked, as a pause stops them.
func (e *Executor) stopCancelledJobs(user string) {
	by := map[string]string{}
	for _, en := range e.ledger.Queue(user).Items {
		if en.CancelledBy != "" {
			by[en.ID] = en.CancelledBy
		}
	}
	for id, cancel := range by {
		e.cancelLocalJobs(user, []string{id}, &sequences.CancelledError{By: cancel, Command: contract.CmdCancel})
	}
}

// publishUnrun publishes, beside the user's queue, the results of
// commands that ended without an executor (cancelled while queued,
// superseded, cancels), so a cancel is answered while a sequence of the
// user runs. The next claim removes them; a result published twice is
// dropped by its Nats-Msg-Id.
func (e *Executor) publishUnrun(user string) {
	e.mu.Lock()
	if e.ctx == nil || e.ctx.Err() != nil {
		e.mu.Unlock()
		return
	}
	var todo []ledger.Entry
	for _, en := range e.ledger.Queue(user).Items {
		if en.Ended != nil && en.Instance == "" && !published(e.settled[user], en.ID) {
			todo = append(todo, en)
		}
	}
	if len(todo) > 0 {
		e.wg.Add(1)
	}
	e.mu.Unlock()
	if len(todo) == 0 {
		return
	}
	go func() {
		defer e.wg.Done()
		for _, en := range todo {
			e.publish(en)
		}
	}()
}
