// Package membership tells the live instances of a service apart and
// assigns work to them: each instance heartbeats into the KV bucket
// VIGIL_MEMBERS and watches it, an instance is live while its heartbeats
// keep coming, and a key (a user, a series) is owned by the live instance
// that rendezvous (highest-random-weight) hashing picks. Every instance
// computes the same owner from the same member list, so no coordinator is
// needed, and when an instance dies its keys move to the others once its
// heartbeats stop (within Timeout).
package membership

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the KV bucket of service members (key <service>.<instance>).
const Bucket = "VIGIL_MEMBERS"

// Defaults of Options.
const (
	DefaultInterval = time.Second
	DefaultTimeout  = 3 * time.Second
)

// Options tune the heartbeat.
type Options struct {
	// Interval between heartbeats (DefaultInterval when zero).
	Interval time.Duration
	// Timeout after the last heartbeat at which a member counts as dead
	// (DefaultTimeout when zero).
	Timeout time.Duration
}

// Group is this instance's view of its service's live members.
type Group struct {
	kv      jetstream.KeyValue
	service string
	self    string
	opts    Options
	roster  *Roster
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	members []string
	changes []chan struct{}
}

// ErrInvalidName reports a service or instance name unusable as a KV key.
var ErrInvalidName = errors.New("membership: invalid name")

// Join starts heartbeating as instance self of service and watching the
// other members. ctx bounds the join only; Leave stops the group.
func Join(ctx context.Context, js jetstream.JetStream, service, self string, opts Options) (*Group, error) {
	if !validKeyPart(service) || !validKeyPart(self) {
		return nil, fmt.Errorf("%w: %q/%q", ErrInvalidName, service, self)
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, bucketConfig)
	if err != nil {
		return nil, fmt.Errorf("membership kv: %w", err)
	}
	g := &Group{kv: kv, service: service, self: self, opts: opts, done: make(chan struct{})}
	if err := g.beat(ctx); err != nil {
		return nil, err
	}
	// The roster takes in the current members before returning, so Owner
	// is right at once, and lives until Leave, not until ctx ends.
	if g.roster, err = watchRoster(ctx, js, service+".*", opts.Timeout, g.recompute); err != nil {
		return nil, err
	}
	g.recompute()
	runCtx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go g.loop(runCtx)
	return g, nil
}

func validKeyPart(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func (g *Group) key(instance string) string { return g.service + "." + instance }

func (g *Group) beat(ctx context.Context) error {
	if _, err := g.kv.Put(ctx, g.key(g.self), []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return fmt.Errorf("membership heartbeat: %w", err)
	}
	return nil
}

// loop heartbeats and re-derives the members, so a member whose beats
// stopped drops out after the timeout even when nothing else changes.
func (g *Group) loop(ctx context.Context) {
	defer close(g.done)
	beat := time.NewTicker(g.opts.Interval)
	defer beat.Stop()
	check := time.NewTicker(g.opts.Interval / 2)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			bctx, cancel := context.WithTimeout(ctx, g.opts.Interval)
			_ = g.beat(bctx) // a missed beat is retried at the next tick
			cancel()
		case <-check.C:
			g.recompute()
		}
	}
}

// recompute derives the live member list and notifies watchers on change.
func (g *Group) recompute() {
	live := g.roster.Live(g.service)
	if !slices.Contains(live, g.self) {
		live = append(live, g.self)
		slices.Sort(live)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if slices.Equal(live, g.members) {
		return
	}
	g.members = live
	for _, ch := range g.changes {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Self is this instance's name.
func (g *Group) Self() string { return g.self }

// Members is the sorted list of live members, this instance included.
func (g *Group) Members() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.members)
}

// Owner is the live member that owns key.
func (g *Group) Owner(key string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return Owner(g.members, key)
}

// Owns reports whether this instance owns key.
func (g *Group) Owns(key string) bool { return g.Owner(key) == g.self }

// Changes returns a channel that receives a value (coalesced) whenever the
// member list changes.
func (g *Group) Changes() <-chan struct{} {
	ch := make(chan struct{}, 1)
	g.mu.Lock()
	g.changes = append(g.changes, ch)
	g.mu.Unlock()
	return ch
}

// Leave stops heartbeating and deletes this instance's entry, so the others
// take over its keys at once instead of after Timeout.
func (g *Group) Leave(ctx context.Context) error {
	g.cancel()
	<-g.done
	g.roster.Stop()
	return g.kv.Delete(ctx, g.key(g.self))
}

// Owner is the member of members that rendezvous hashing assigns key to, or
// "" when there are no members.
func Owner(members []string, key string) string {
	var best string
	var bestScore uint64
	for _, m := range members {
		h := fnv.New64a()
		h.Write([]byte(m))
		h.Write([]byte{0})
		h.Write([]byte(key))
		if s := mix(h.Sum64()); best == "" || s > bestScore {
			best, bestScore = m, s
		}
	}
	return best
}

// mix is a 64-bit finaliser (splitmix64) that spreads FNV's output.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
