package daemon

import (
	"context"
	"fmt"

	"vigil.dev/pkg/contract"
)

// requireUser rejects a verb request without a user.
func requireUser(req contract.SvcRequest) error {
	if req.User == "" {
		return contract.FieldError{Field: "user", Problem: "is required"}
	}
	return nil
}

// pause answers vigil.svc.alerts.pause: stop evaluating the user.
func (in *instance) pause(ctx context.Context, req contract.SvcRequest) (any, error) {
	if err := requireUser(req); err != nil {
		return nil, err
	}
	return in.monitor.Pause(ctx, req.User, req.State)
}

// resume answers vigil.svc.alerts.resume: evaluate the user again, on
// fresh values only.
func (in *instance) resume(ctx context.Context, req contract.SvcRequest) (any, error) {
	if err := requireUser(req); err != nil {
		return nil, err
	}
	return in.monitor.Resume(ctx, req.User, req.State)
}

// apply answers vigil.svc.alerts.apply: load the rules of State.Mode.
func (in *instance) apply(ctx context.Context, req contract.SvcRequest) (any, error) {
	if err := requireUser(req); err != nil {
		return nil, err
	}
	return in.monitor.Apply(ctx, req.User, req.State)
}

// plan answers vigil.svc.alerts.plan: the rules apply of State would add,
// change and remove here, changing nothing.
func (in *instance) plan(_ context.Context, req contract.SvcRequest) (any, error) {
	if err := requireUser(req); err != nil {
		return nil, err
	}
	args, err := contract.DecodePeer[contract.PlanArgs](req.Args)
	if len(req.Args) == 0 {
		err = contract.FieldError{Field: "args", Problem: "is required"}
	}
	if err != nil {
		return nil, err
	}
	if args.Verb != contract.VerbApply {
		return nil, contract.FieldError{Field: "args.verb", Problem: fmt.Sprintf("%q has no plan in vigil-alerts (apply)", args.Verb)}
	}
	if req.State == nil {
		return nil, contract.FieldError{Field: "state", Problem: "is required"}
	}
	return in.monitor.PlanApply(req.User, *req.State)
}
