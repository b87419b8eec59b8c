package sequences

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/control/internal/desired"
)

// rollbackGrace is added to the compensation steps' timeouts to bound a
// rollback that runs after the command's context ended.
const rollbackGrace = 5 * time.Second

// allOrNothing runs an all-or-nothing sequence (reload-settings,
// switch-mode; ARCHITECTURE.md §6): it writes next over prev, runs the
// steps, and when one is not confirmed rolls back (rollback) before it
// reports the failure.
func (r *Runner) allOrNothing(ctx context.Context, cmd Command, prev desired.Entry, next contract.DesiredState, specs []stepSpec, result func([][]contract.SvcReply) any) Outcome {
	next.CommandID = cmd.ID
	next.UpdatedAt = r.cfg.Now().UTC()
	kvRev, err := r.d.States.Put(ctx, next, prev.KVRev)
	if err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	steps, replies, err := r.run(ctx, cmd, &next, specs, nil, r.cfg.StepTimeout)
	if err == nil {
		return succeeded(result(replies), steps)
	}
	return r.rollback(ctx, cmd, prev.State, next, kvRev, specs[:len(steps)], steps, contract.ErrorOf(err))
}

// rollback undoes a failed all-or-nothing sequence whose forward steps
// (specs, run as forward; the last one not confirmed) ran with next, written at KV revision
// kvRev: it writes prev back (compare-and-set at kvRev, with a new
// UpdatedAt so the services take it as the newest state), then re-applies
// it in compensation steps, in reverse order, on every service where an
// instance confirmed a forward step; a compensation step that one of those
// instances does not confirm is sent once more, and the reason names the
// instances that confirmed neither. It returns the command failed with
// cause, the forward and compensation steps, and a contract.Rollback
// result. The rollback runs even when ctx ended (bounded by the
// compensation steps' timeouts), so a cancelled or shut down command does
// not leave instances on the new revision.
func (r *Runner) rollback(ctx context.Context, cmd Command, prev, next contract.DesiredState, kvRev uint64, specs []stepSpec, forward []contract.Step, cause *contract.Error) Outcome {
	comp := compensation(specs, forward, prev.Paused)
	// Each compensation step, once more each, and the status probe.
	bound := time.Duration(2*len(comp)+1)*r.cfg.StepTimeout + rollbackGrace
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	defer cancel()
	ctx, span := otel.Tracer("vigil.dev/services/control/sequences").Start(ctx, "vigil-control rollback", trace.WithAttributes(
		attribute.String("vigil.user", cmd.User), attribute.String("vigil.command_id", cmd.ID),
		attribute.Int64("vigil.revision", prev.Revision), attribute.Int64("vigil.attempted_revision", next.Revision),
		attribute.Int("vigil.compensation_steps", len(comp))))
	defer span.End()

	rb := contract.Rollback{Revision: prev.Revision, Attempted: next.Revision}
	steps := slices.Clone(forward)
	restored := prev
	restored.CommandID = cmd.ID
	restored.UpdatedAt = r.cfg.Now().UTC()
	if _, err := r.d.States.Put(ctx, restored, kvRev); err != nil {
		// Compensating without the restored state in VIGIL_STATE would
		// leave the instances on a revision the desired state does not
		// name: the new state stays, and the instances converge to it.
		rb.Reason = fmt.Sprintf("desired state revision %d not restored (%v): revision %d stays desired and the instances converge to it; no compensation ran",
			prev.Revision, err, next.Revision)
	} else {
		rb.Restored = true
		var reasons []string
		for _, c := range comp {
			s := r.compensate(ctx, cmd, &restored, c)
			steps = append(steps, s)
			lost := unconfirmed(c.moved, s)
			if len(lost) > 0 {
				// Retried once: an instance may have refused or missed
				// it for a passing reason (busy, a reconnect).
				s = r.compensate(ctx, cmd, &restored, c)
				steps = append(steps, s)
				lost = unconfirmed(lost, s)
			}
			if len(lost) > 0 {
				reasons = append(reasons, fmt.Sprintf("%s %s not confirmed by %s (tried twice): not restored there",
					c.svc.MicroName(), c.verb, strings.Join(lost, ", ")))
			}
		}
		rb.RolledBack = len(reasons) == 0
		if !rb.RolledBack {
			rb.Reason = strings.Join(reasons, "; ") + fmt.Sprintf("; the desired state is revision %d again and the instances converge to it", prev.Revision)
		}
	}
	rb.Instances = instanceRevisions(prev.Revision, next.Revision, steps)
	r.probeRevisions(ctx, cmd.User, rb.Instances)
	span.SetAttributes(attribute.Bool("vigil.rolled_back", rb.RolledBack))
	e := *cause
	if rb.RolledBack {
		e.Message += fmt.Sprintf(" (rolled back: every instance is on revision %d again)", prev.Revision)
	} else {
		span.SetStatus(codes.Error, rb.Reason)
		e.Message += " (rollback incomplete: " + rb.Reason + ")"
	}
	out := failed(steps, &e)
	out.Result = rb
	return out
}

// probeRevisions asks the instances whose revision the apply steps left
// unknown (they answered none) for their status, one status request per
// service, and records the user's revision each reports (Probed), or
// that it did not answer (Unreachable).
func (r *Runner) probeRevisions(ctx context.Context, user string, instances []contract.InstanceRevision) {
	unknown := map[string][]int{} // by service
	for i, in := range instances {
		if in.Revision == 0 {
			unknown[in.Service] = append(unknown[in.Service], i)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(unknown)) {
		svc := contract.Svc(strings.TrimPrefix(name, "vigil-"))
		// Not every instance need answer: the error says only that.
		a, _ := r.d.Steps.Call(ctx, svc, contract.VerbStatus, contract.SvcRequest{User: user}, r.cfg.StepTimeout)
		answered := map[string]contract.SvcReply{}
		for _, rep := range a.Replies {
			answered[rep.Instance] = rep
		}
		for _, i := range unknown[name] {
			rep, ok := answered[instances[i].Instance]
			if !ok {
				instances[i].Unreachable = true
				continue
			}
			var st struct {
				Users map[string]struct {
					Revision int64 `json:"revision"`
				} `json:"users"`
			}
			if json.Unmarshal(rep.Result, &st) == nil {
				instances[i].Revision, instances[i].Probed = st.Users[user].Revision, true
			}
		}
	}
}

// compStep is one compensation step: the verb that undoes a forward step
// on svc, and the instances that confirmed that forward step.
type compStep struct {
	stepSpec
	moved []string
}

// compensation lists the steps that undo the forward steps, last first:
// apply again (with the restored state), resume what a quiesce paused
// (unless the user stays paused), pause what a resume started. A forward
// step no instance confirmed changed nothing and needs none. specs[i] is
// the step that ran as forward[i].
func compensation(specs []stepSpec, forward []contract.Step, paused bool) []compStep {
	var out []compStep
	for i := len(forward) - 1; i >= 0; i-- {
		moved := answered(forward[i])
		if len(moved) == 0 {
			continue
		}
		verb := specs[i].verb
		switch verb {
		case contract.VerbPause:
			if paused {
				continue
			}
			verb = contract.VerbResume
		case contract.VerbResume:
			verb = contract.VerbPause
		}
		out = append(out, compStep{stepSpec{specs[i].svc, verb}, moved})
	}
	return out
}

// compensate sends one compensation step with the restored state.
func (r *Runner) compensate(ctx context.Context, cmd Command, restored *contract.DesiredState, c compStep) contract.Step {
	req := contract.SvcRequest{CommandID: cmd.ID, User: cmd.User, State: restored}
	a, err := r.d.Steps.Call(ctx, c.svc, c.verb, req, r.cfg.StepTimeout)
	s := a.Step
	s.Service, s.Verb, s.Compensation = c.svc.MicroName(), c.verb, true
	if err != nil && s.Error == nil {
		s.Error = contract.ErrorOf(err)
	}
	return s
}

// answered lists the instances that confirmed step s.
func answered(s contract.Step) []string {
	var out []string
	for _, o := range s.Outcomes {
		if o.Outcome == contract.InstanceAnswered {
			out = append(out, o.Instance)
		}
	}
	return out
}

// unconfirmed lists the instances of moved that did not confirm s.
func unconfirmed(moved []string, s contract.Step) []string {
	ok := answered(s)
	var out []string
	for _, id := range moved {
		if !slices.Contains(ok, id) {
			out = append(out, id)
		}
	}
	return out
}

// instanceRevisions says which revision each instance that took part in an
// apply step is on: a forward apply confirmed moves it to attempted, one
// refused leaves it on prev, one unanswered makes it unknown (0); a
// compensation apply confirmed brings it back to prev, one not confirmed
// leaves it where the forward step left it.
func instanceRevisions(prev, attempted int64, steps []contract.Step) []contract.InstanceRevision {
	type key struct{ svc, id string }
	rev := map[key]int64{}
	var order []key
	for _, s := range steps {
		if s.Verb != contract.VerbApply {
			continue
		}
		for _, o := range s.Outcomes {
			k := key{s.Service, o.Instance}
			if _, seen := rev[k]; !seen {
				order = append(order, k)
				rev[k] = 0
			}
			switch {
			case o.Outcome == contract.InstanceAnswered && s.Compensation:
				rev[k] = prev
			case o.Outcome == contract.InstanceAnswered:
				rev[k] = attempted
			case o.Outcome == contract.InstanceFailed && !s.Compensation:
				rev[k] = prev
			}
		}
	}
	slices.SortFunc(order, func(a, b key) int {
		return strings.Compare(a.svc+"\x00"+a.id, b.svc+"\x00"+b.id)
	})
	out := make([]contract.InstanceRevision, 0, len(order))
	for _, k := range order {
		out = append(out, contract.InstanceRevision{Service: k.svc, Instance: k.id, Revision: rev[k]})
	}
	return out
}
