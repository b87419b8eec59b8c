package membership

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// bucketConfig is the configuration of Bucket.
var bucketConfig = jetstream.KeyValueConfig{
	Bucket:      Bucket,
	Description: "vigil live service instances (key <service>.<instance>)",
	History:     1,
	TTL:         time.Minute,
	Storage:     jetstream.MemoryStorage,
}

// stallFactor bounds, in timeouts, how long a roster that receives no
// heartbeat at all keeps its members alive.
const stallFactor = 2

// Roster follows the heartbeats in Bucket without joining: it knows which
// instances of every service are live. Control uses it to expect an answer
// from an instance that died moments ago (and no longer answers $SRV.PING)
// and name it as missing; Group uses it for its own service.
type Roster struct {
	timeout time.Duration
	cancel  context.CancelFunc
	done    chan struct{}
	// changed is called (outside the lock) after every heartbeat change.
	changed func()

	mu       sync.Mutex
	lastSeen map[string]time.Time // key <service>.<instance>
}

// WatchRoster starts following every service's heartbeats. An instance
// counts as dead timeout after its last heartbeat (DefaultTimeout when
// zero). Stop ends the watch.
func WatchRoster(ctx context.Context, js jetstream.JetStream, timeout time.Duration) (*Roster, error) {
	return watchRoster(ctx, js, ">", timeout, nil)
}

func watchRoster(ctx context.Context, js jetstream.JetStream, keys string, timeout time.Duration, changed func()) (*Roster, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, bucketConfig)
	if err != nil {
		return nil, fmt.Errorf("membership kv: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	watcher, err := kv.Watch(runCtx, keys)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("membership watch: %w", err)
	}
	r := &Roster{timeout: timeout, cancel: cancel, done: make(chan struct{}), changed: changed, lastSeen: map[string]time.Time{}}
	// Entries from before the watch carry the server's time, so the last
	// beat of a dead instance does not look fresh; live updates use the
	// local receive time (host clocks may differ).
	for e := range watcher.Updates() {
		if e == nil {
			break
		}
		r.observe(e, e.Created())
	}
	go r.loop(runCtx, watcher)
	return r, nil
}

func (r *Roster) loop(ctx context.Context, watcher jetstream.KeyWatcher) {
	defer close(r.done)
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
				r.observe(e, time.Now())
				if r.changed != nil {
					r.changed()
				}
			}
		}
	}
}

func (r *Roster) observe(e jetstream.KeyValueEntry, seen time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(r.lastSeen, e.Key())
		return
	}
	r.lastSeen[e.Key()] = seen
}

// clock is the roster's "now": the newest heartbeat it has seen, but at
// most stallFactor timeouts behind the wall clock. Time moves on with the
// heartbeats, so while the bucket delivers none at all (the leader
// election of a replicated bucket after a server died, a reconnect)
// nobody is declared dead for lack of beats; a member whose beats stop
// while the others' go on still drops out after the timeout, and one that
// stopped when everybody else had is declared dead after the stall too.
// The caller holds r.mu.
func (r *Roster) clock() time.Time {
	newest := time.Now().Add(-stallFactor * r.timeout)
	for _, seen := range r.lastSeen {
		if seen.After(newest) {
			newest = seen
		}
	}
	return newest
}

// Live lists the live instances of service (its micro service name),
// sorted. An instance is live when its last heartbeat is at most the
// timeout older than the roster's clock.
func (r *Roster) Live(service string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clock()
	var out []string
	for key, seen := range r.lastSeen {
		instance, ok := strings.CutPrefix(key, service+".")
		if ok && now.Sub(seen) <= r.timeout {
			out = append(out, instance)
		}
	}
	slices.Sort(out)
	return out
}

// Stop ends the watch.
func (r *Roster) Stop() {
	r.cancel()
	<-r.done
}
