package sequences

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/control/internal/desired"
)

// ErrStalePlan reports a real command given a plan hash whose inputs
// changed since its dry run (conflict).
var ErrStalePlan = contract.NewKind(contract.ErrConflict, "the plan is stale")

// tracer makes the plan span of a dry run or plan check.
var tracer = otel.Tracer("vigil.dev/services/control/sequences")

// digest is the SHA-256 of v's JSON.
func digest(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("digest: %v", err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// stateDigest is the digest of a desired state's content: without the
// command that wrote it and when.
func stateDigest(st contract.DesiredState) string {
	st.CommandID, st.UpdatedAt = "", time.Time{}
	return digest(st)
}

// planningOf is the payload's dry-run fields (none for pause and resume).
func planningOf(p contract.Payload) contract.Planning {
	if pl, ok := p.(contract.Planned); ok {
		return pl.Planned()
	}
	return contract.Planning{}
}

// isDryRun reports whether cmd is a dry run.
func isDryRun(cmd Command) bool { return planningOf(cmd.Payload).DryRun }

// planPayload is p's JSON without id and dry-run fields: what of the
// payload a plan depends on.
func planPayload(p contract.Payload) json.RawMessage {
	b, err := json.Marshal(withoutPlanning(p))
	if err != nil {
		panic(fmt.Sprintf("payload not encodable: %v", err)) // every payload is plain data
	}
	return b
}

// withoutPlanning is p without id and dry-run fields.
func withoutPlanning(p contract.Payload) contract.Payload {
	switch v := p.(type) {
	case contract.ReloadSettingsPayload:
		v.ID, v.Planning = "", contract.Planning{}
		return v
	case contract.SwitchModePayload:
		v.ID, v.Planning = "", contract.Planning{}
		return v
	case contract.ForceBackfillPayload:
		v.ID, v.Planning = "", contract.Planning{}
		return v
	case contract.ClearCachePayload:
		v.ID, v.Planning = "", contract.Planning{}
		return v
	}
	return p
}

// planInputs starts the inputs of cmd over the desired state before it.
func planInputs(cmd Command, before contract.DesiredState) contract.PlanInputs {
	return contract.PlanInputs{Command: cmd.Name, Payload: planPayload(cmd.Payload), State: stateDigest(before), StateRevision: before.Revision}
}

// checkPlan compares the plan hash cmd was given (if any) with the hash of
// in, as a span of the command's trace; a different hash is ErrStalePlan.
func checkPlan(ctx context.Context, cmd Command, in contract.PlanInputs) error {
	given := planningOf(cmd.Payload).Plan
	if given == "" {
		return nil
	}
	_, span := tracer.Start(ctx, "plan check", trace.WithAttributes(attribute.String("vigil.plan", given)))
	defer span.End()
	now := in.Hash()
	span.SetAttributes(attribute.String("vigil.plan.now", now), attribute.Bool("vigil.plan.stale", now != given))
	if now != given {
		return fmt.Errorf("%w: plan %s was made on other inputs than now (%s: desired state revision %d%s); nothing was changed, make a new plan with \"dry_run\":true",
			ErrStalePlan, given, now, in.StateRevision, keysText(in.Keys))
	}
	return nil
}

func keysText(keys map[string]int) string {
	if keys == nil {
		return ""
	}
	return fmt.Sprintf(", keys %v", keys)
}

// peek is the user's desired state for a dry run: as stored, or, for a
// user without one, the initial state seeding would write (not written).
func (r *Runner) peek(ctx context.Context, user string) (desired.Entry, error) {
	e, err := r.d.States.Get(ctx, user)
	if err != nil || e.Exists() {
		return e, err
	}
	u, err := r.d.Users.Lookup(ctx, user)
	if err != nil {
		return desired.Entry{}, err
	}
	st, err := r.InitialState(u)
	return desired.Entry{State: st}, err
}

// stateFor is the desired state cmd starts from: peek for a dry run (which
// writes nothing), current otherwise.
func (r *Runner) stateFor(ctx context.Context, cmd Command) (desired.Entry, error) {
	if isDryRun(cmd) {
		return r.peek(ctx, cmd.User)
	}
	return r.current(ctx, cmd.User)
}

// planSpec is one service asked for the plan of one verb.
type planSpec struct {
	svc  contract.Svc
	verb contract.Verb
	args any
}

// askPlans sends vigil.svc.<service>.plan for each spec in order, with st
// as the request's state; every instance answers what the verb would do
// there. It stops at the first step not confirmed.
func (r *Runner) askPlans(ctx context.Context, cmd Command, st *contract.DesiredState, specs []planSpec, timeout time.Duration) ([]contract.Step, map[string]contract.InstancePlans, error) {
	plans := map[string]contract.InstancePlans{}
	var steps []contract.Step
	for _, s := range specs {
		args := contract.PlanArgs{Verb: s.verb}
		if s.args != nil {
			b, err := json.Marshal(s.args)
			if err != nil {
				return steps, plans, fmt.Errorf("encode plan args: %w", err)
			}
			args.Args = b
		}
		st, replies, err := r.run(ctx, cmd, st, []stepSpec{{s.svc, contract.VerbPlan}}, args, timeout)
		steps = append(steps, st...)
		if err != nil {
			return steps, plans, err
		}
		name := s.svc.MicroName()
		if plans[name] == nil {
			plans[name] = contract.InstancePlans{}
		}
		for _, rep := range replies[0] {
			plans[name][rep.Instance] = rep.Result
		}
	}
	return steps, plans, nil
}

// dryRun is the dry-run part of a plan's result: the plan hash of in, in
// and the services' plans (nil when none was asked).
func dryRun(ctx context.Context, in contract.PlanInputs, plans map[string]contract.InstancePlans) contract.DryRunResult {
	hash := in.Hash()
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("vigil.plan", hash))
	return contract.DryRunResult{DryRun: true, Plan: hash, Inputs: in, Services: plans}
}

// planSpan starts the span of a dry run's plan.
func planSpan(ctx context.Context, cmd Command) (context.Context, trace.Span) {
	return tracer.Start(ctx, "plan "+string(cmd.Name), trace.WithAttributes(attribute.String("vigil.command_id", cmd.ID)))
}

// planApply is the dry run of reload-settings and switch-mode: every
// instance of feed, indicators and alerts says what apply of next would
// change there. result builds the plan's result from the dry-run part.
func (r *Runner) planApply(ctx context.Context, cmd Command, in contract.PlanInputs, next contract.DesiredState, result func(contract.DryRunResult) any) Outcome {
	ctx, span := planSpan(ctx, cmd)
	defer span.End()
	var specs []planSpec
	for _, s := range applySteps {
		specs = append(specs, planSpec{svc: s.svc, verb: s.verb})
	}
	steps, plans, err := r.askPlans(ctx, cmd, &next, specs, r.cfg.StepTimeout)
	if err != nil {
		return failed(steps, contract.ErrorOf(err))
	}
	return succeeded(result(dryRun(ctx, in, plans)), steps)
}

// planBackfill is the dry run of force-backfill: for each timeframe, in
// the order the real run takes them, the feed's instances say how many
// pages and requests its backfill takes and how long at the source's rate
// limit, and the indicators' instances which one would recompute the
// series.
func (r *Runner) planBackfill(ctx context.Context, cmd Command, p contract.ForceBackfillPayload, in contract.PlanInputs, st contract.DesiredState) Outcome {
	ctx, span := planSpan(ctx, cmd)
	defer span.End()
	var specs []planSpec
	for _, job := range r.backfillJobs(cmd, p, st) {
		specs = append(specs, planSpec{svc: contract.SvcFeed, verb: contract.VerbBackfill, args: job.args},
			planSpec{svc: contract.SvcIndicators, verb: contract.VerbRecompute, args: contract.RecomputeArgs{Series: job.series}})
	}
	var steps []contract.Step
	byTF := map[contract.Timeframe]map[string]contract.InstancePlans{}
	var total contract.FeedBackfillPlan // the owners' plans added up
	for i := 0; i < len(specs); i += 2 {
		tf := p.BackfillTimeframes()[i/2]
		s, plans, err := r.askPlans(ctx, cmd, &st, specs[i:i+2], r.cfg.StepTimeout)
		steps = append(steps, s...)
		if err != nil {
			return failed(steps, contract.ErrorOf(err))
		}
		byTF[tf] = plans
		for _, raw := range plans[contract.SvcFeed.MicroName()] {
			var e contract.FeedBackfillPlan
			if json.Unmarshal(raw, &e) == nil && e.Owner {
				total.Pages += e.Pages
				total.Requests += e.Requests
				total.EstimatedSeconds += e.EstimatedSeconds
			}
		}
	}
	return succeeded(contract.ForceBackfillPlan{Symbol: p.Symbol, Pages: total.Pages, Requests: total.Requests,
		EstimatedSeconds: total.EstimatedSeconds, Timeframes: byTF, DryRunResult: dryRun(ctx, in, nil)}, steps)
}

// planClearCache counts the keys clear-cache args would delete, by prefix
// (SCAN, no UNLINK): for a dry run it also asks every indicators instance
// which series it would forget and returns the plan (stop true); for a
// real command given a plan it checks the plan (stop true when stale).
func (r *Runner) planClearCache(ctx context.Context, cmd Command, args contract.ForgetArgs) (out Outcome, stop bool) {
	dry := isDryRun(cmd)
	if dry {
		var span trace.Span
		ctx, span = planSpan(ctx, cmd)
		defer span.End()
	}
	keys, err := r.d.Cache.CountCleared(ctx, args.Selector())
	if err != nil {
		return failed(nil, &contract.Error{Code: contract.CodeUnavailable, Message: "redis: counting the keys: " + err.Error()}), true
	}
	in := contract.PlanInputs{Command: cmd.Name, Payload: planPayload(cmd.Payload), Exchange: args.ExchangeID, Keys: keys}
	if !dry {
		if err := checkPlan(ctx, cmd, in); err != nil {
			return failed(nil, contract.ErrorOf(err)), true
		}
		return Outcome{}, false
	}
	steps, plans, err := r.askPlans(ctx, cmd, nil, []planSpec{{svc: contract.SvcIndicators, verb: contract.VerbForget, args: args}}, r.cfg.StepTimeout)
	if err != nil {
		return failed(steps, contract.ErrorOf(err)), true
	}
	n := 0
	for _, c := range keys {
		n += c
	}
	return succeeded(contract.ClearCachePlan{ClearedKeys: clearedKeys(args, false), Keys: keys, WouldDeleteCount: n,
		DryRunResult: dryRun(ctx, in, plans)}, steps), true
}
