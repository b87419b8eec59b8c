package alerts

import (
	"context"

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
