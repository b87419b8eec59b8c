package fanout

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/membership"
)

// Members watches the heartbeats of every service's instances in the KV
// bucket membership.Bucket (key <service>.<instance>) without joining: an
// instance is live while its heartbeats keep coming. It lets control expect
// an answer from an instance that died moments ago and so no longer answers
// $SRV.PING, and name it as missing.
type Members struct {
	timeout time.Duration
	cancel  context.CancelFunc
	done    chan struct{}

	mu       sync.Mutex
	lastSeen map[string]time.Time // key <service>.<instance>
}

// WatchMembers starts watching the membership bucket, which must exist
// (membership.Join creates it). An instance counts as dead timeout after
// its last heartbeat (membership.DefaultTimeout when zero).
func WatchMembers(ctx context.Context, js jetstream.JetStream, timeout time.Duration) (*Members, error) {
	if timeout <= 0 {
		timeout = membership.DefaultTimeout
	}
	kv, err := js.KeyValue(ctx, membership.Bucket)
	if err != nil {
		return nil, fmt.Errorf("fanout: open %s: %w", membership.Bucket, err)
	}
	watcher, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("fanout: watch %s: %w", membership.Bucket, err)
	}
	m := &Members{timeout: timeout, lastSeen: map[string]time.Time{}, done: make(chan struct{})}
	// Entries from before the watch carry their server time, so the last
	// beat of a dead instance does not look fresh; live updates use the
	// local receive time (host clocks may differ).
	for e := range watcher.Updates() {
		if e == nil {
			break
		}
		m.observe(e, e.Created())
	}
	runCtx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go m.loop(runCtx, watcher)
	return m, nil
}

func (m *Members) loop(ctx context.Context, watcher jetstream.KeyWatcher) {
	defer close(m.done)
	defer watcher.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-watcher.Updates():
			if !ok {
				return
			}
			if e != nil {
				m.observe(e, time.Now())
			}
		}
	}
}

func (m *Members) observe(e jetstream.KeyValueEntry, seen time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(m.lastSeen, e.Key())
		return
	}
	m.lastSeen[e.Key()] = seen
}

// Live lists the live instances of service (its micro service name),
// sorted.
func (m *Members) Live(service string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	var out []string
	for key, seen := range m.lastSeen {
		instance, ok := strings.CutPrefix(key, service+".")
		if ok && now.Sub(seen) <= m.timeout {
			out = append(out, instance)
		}
	}
	slices.Sort(out)
	return out
}

// Stop ends the watch.
func (m *Members) Stop() {
	m.cancel()
	<-m.done
}
