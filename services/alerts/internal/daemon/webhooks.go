package daemon

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/alerts/internal/webhook"
)

// webhookTargets are the users' webhooks as VIGIL_STATE gives them, and
// the webhooks removed since the last sync.
type webhookTargets struct {
	mu      sync.Mutex
	hooks   map[string]webhook.Target
	removed map[string]bool
}

func newWebhookTargets() *webhookTargets {
	return &webhookTargets{hooks: map[string]webhook.Target{}, removed: map[string]bool{}}
}

// set records user's webhook from a desired state written at since; a nil
// or empty hook removes it.
func (w *webhookTargets) set(user string, hook *contract.WebhookSettings, since time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	old, had := w.hooks[user]
	if hook == nil || hook.URL == "" {
		if had {
			delete(w.hooks, user)
			w.removed[user] = true
		}
		return
	}
	if had && old.Hook == *hook {
		return
	}
	w.hooks[user] = webhook.Target{Hook: *hook, Since: since}
	delete(w.removed, user)
}

// take returns the webhooks of the users owns accepts and the owned users
// whose webhook was removed since the last call, forgetting the removals.
func (w *webhookTargets) take(owns func(string) bool) (want map[string]webhook.Target, removed []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	want = map[string]webhook.Target{}
	for user, t := range w.hooks {
		if owns(user) {
			want[user] = t
		}
	}
	for _, user := range slices.Sorted(maps.Keys(w.removed)) {
		if owns(user) {
			removed = append(removed, user)
		}
	}
	clear(w.removed)
	return want, removed
}

// syncWebhooks runs the webhook deliveries of the users this instance owns
// and deletes the consumers of removed webhooks.
func (in *instance) syncWebhooks(ctx context.Context) {
	want, removed := in.webhooks.take(userOwnership{in}.Owns)
	in.hooks.Sync(ctx, want, removed)
}
