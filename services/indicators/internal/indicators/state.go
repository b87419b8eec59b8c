package indicators

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/service"
	"vigil.dev/services/indicators/internal/engine"
)

// followState watches KV VIGIL_STATE: it applies every user's current
// desired state before it returns (so the instance starts converged), then
// follows changes in the background until bg ends.
func followState(ctx, bg context.Context, rt *service.Runtime, e *engine.Engine) error {
	kv, err := rt.JS.KeyValue(ctx, contract.BucketState)
	if err != nil {
		return fmt.Errorf("kv %s: %w", contract.BucketState, err)
	}
	watcher, err := kv.WatchAll(bg)
	if err != nil {
		return fmt.Errorf("watch %s: %w", contract.BucketState, err)
	}
	for entry := range watcher.Updates() {
		if entry == nil {
			break // the current values are in
		}
		applyState(ctx, rt, e, entry)
	}
	go func() {
		defer watcher.Stop()
		for entry := range watcher.Updates() {
			if entry != nil {
				applyState(bg, rt, e, entry)
			}
		}
	}()
	return nil
}

// applyState hands one VIGIL_STATE entry to the engine.
func applyState(ctx context.Context, rt *service.Runtime, e *engine.Engine, entry jetstream.KeyValueEntry) {
	token, err := contract.UserFromStateKey(entry.Key())
	if err != nil {
		rt.Log.WarnContext(ctx, "desired state key ignored", "key", entry.Key(), "err", err)
		return
	}
	if entry.Operation() != jetstream.KeyValuePut {
		e.RemoveUser(ctx, token)
		return
	}
	// Decoded leniently: control may add fields this instance does not
	// know yet.
	var st contract.DesiredState
	if err := json.Unmarshal(entry.Value(), &st); err != nil {
		rt.Log.WarnContext(ctx, "desired state ignored", "user", token, "err", err)
		return
	}
	if st.User != token {
		rt.Log.WarnContext(ctx, "desired state ignored", "user", token, "err", fmt.Sprintf("state names user %q", st.User))
		return
	}
	change, err := e.SetState(ctx, st)
	if err != nil {
		rt.Log.WarnContext(ctx, "desired state ignored", "user", token, "err", err)
		return
	}
	rt.Log.InfoContext(ctx, "desired state applied", "user", token, "paused", st.Paused, "mode", st.Mode, "revision", st.Revision,
		"series", change.Series, "added", change.Added, "removed", change.Removed, "recomputed", change.Recomputed)
}
