package daemon

import (
	"context"
	"time"

	"vigil.dev/pkg/service"
)

// applyDesired converges to one user's desired state as the kit's follower
// (service.FollowStates) hands it over: a deleted entry forgets the user.
// The webhook consumers follow once the instance runs (reconcile syncs them
// at start).
func (in *instance) applyDesired(ctx context.Context, us service.UserState) {
	if us.Deleted {
		in.monitor.Forget(us.User)
		in.webhooks.set(us.User, nil, us.Created)
	} else {
		if err := in.monitor.SetState(ctx, us.State); err != nil && ctx.Err() == nil {
			in.log.WarnContext(ctx, "converging to the desired state failed, retried later", "user", us.User, "err", err)
		}
		in.webhooks.set(us.User, us.State.Settings.Webhook, us.Created)
	}
	if in.ready.Load() {
		in.syncWebhooks(ctx)
	}
}

// reconcileLoop converges the users every ReconcileInterval (which
// retries failed gains); the consumer converges them whenever its
// partitions change.
func (in *instance) reconcileLoop() {
	defer in.loops.Done()
	tick := time.NewTicker(in.cfg.ReconcileInterval)
	defer tick.Stop()
	for {
		select {
		case <-in.loopCtx.Done():
			return
		case <-tick.C:
			in.reconcile(in.loopCtx)
		}
	}
}

// reconcile gains the users of the owned partitions and lets go of the
// others.
func (in *instance) reconcile(ctx context.Context) {
	if err := in.monitor.Reconcile(ctx); err != nil && ctx.Err() == nil {
		in.log.Warn("reconcile failed, retried later", "err", err)
	}
	in.syncWebhooks(ctx)
}
