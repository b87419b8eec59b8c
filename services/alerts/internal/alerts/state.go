package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
)

// loadDesiredStates watches KV VIGIL_STATE and hands every stored desired
// state to the monitor before it returns (gaining the owned users), so the
// instance has converged before it evaluates. The watcher keeps running
// until loopCtx ends.
func (in *instance) loadDesiredStates(ctx context.Context) (jetstream.KeyWatcher, error) {
	kv, err := in.rt.JS.KeyValue(ctx, contract.BucketState)
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", contract.BucketState, err)
	}
	watcher, err := kv.WatchAll(in.loopCtx)
	if err != nil {
		return nil, fmt.Errorf("watch kv %s: %w", contract.BucketState, err)
	}
	for {
		select {
		case e, ok := <-watcher.Updates():
			if !ok {
				return nil, fmt.Errorf("watch kv %s: %w", contract.BucketState, errors.New("watcher closed"))
			}
			if e == nil {
				return watcher, nil
			}
			in.applyDesired(ctx, e)
		case <-ctx.Done():
			_ = watcher.Stop()
			return nil, ctx.Err()
		}
	}
}

// watchDesiredStates hands every change of VIGIL_STATE to the monitor.
func (in *instance) watchDesiredStates(watcher jetstream.KeyWatcher) {
	defer in.loops.Done()
	defer func() { _ = watcher.Stop() }()
	for {
		select {
		case <-in.loopCtx.Done():
			return
		case e, ok := <-watcher.Updates():
			if !ok {
				return
			}
			if e != nil {
				in.applyDesired(in.loopCtx, e)
				in.syncWebhooks(in.loopCtx)
			}
		}
	}
}

// applyDesired converges to one VIGIL_STATE entry: a deleted entry forgets
// the user.
func (in *instance) applyDesired(ctx context.Context, e jetstream.KeyValueEntry) {
	user, err := contract.UserFromStateKey(e.Key())
	if err != nil {
		in.log.WarnContext(ctx, "desired state under a bad key ignored", "key", e.Key(), "err", err)
		return
	}
	if op := e.Operation(); op == jetstream.KeyValueDelete || op == jetstream.KeyValuePurge {
		in.monitor.Forget(user)
		in.webhooks.set(user, nil, e.Created())
		return
	}
	var st contract.DesiredState
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		in.log.WarnContext(ctx, "undecodable desired state ignored", "user", user, "err", err)
		return
	}
	switch st.User {
	case "":
		st.User = user
	case user:
	default:
		in.log.WarnContext(ctx, "desired state of another user ignored", "key", e.Key(), "state_user", st.User)
		return
	}
	if err := in.monitor.SetState(ctx, st); err != nil && ctx.Err() == nil {
		in.log.WarnContext(ctx, "converging to the desired state failed, retried later", "user", user, "err", err)
	}
	in.webhooks.set(user, st.Settings.Webhook, e.Created())
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
