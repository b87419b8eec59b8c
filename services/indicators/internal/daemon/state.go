package daemon

import (
	"context"

	"vigil.dev/pkg/service"
	"vigil.dev/services/indicators/internal/series"
)

// applyState converges the engine to one user's desired state as the kit's
// follower (service.FollowStates) hands it over: a deleted entry removes the
// user.
func applyState(rt *service.Runtime, e *series.Engine) func(context.Context, service.UserState) {
	return func(ctx context.Context, us service.UserState) {
		if us.Deleted {
			e.RemoveUser(ctx, us.User)
			return
		}
		st := us.State
		change, err := e.SetState(ctx, st)
		if err != nil {
			rt.Log.WarnContext(ctx, "desired state ignored", "user", us.User, "err", err)
			return
		}
		rt.Log.InfoContext(ctx, "desired state applied", "user", us.User, "paused", st.Paused, "mode", st.Mode, "revision", st.Revision,
			"series", change.Series, "added", change.Added, "removed", change.Removed, "recomputed", change.Recomputed)
	}
}
