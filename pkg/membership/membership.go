// Package membership tells the live instances of a service apart and
// assigns work to them: each instance heartbeats into the KV bucket
// VIGIL_MEMBERS and watches it, an instance is live while its heartbeats
// keep coming, and a key (a user, a series) is owned by the live instance
// that rendezvous (highest-random-weight) hashing picks. Every instance
// computes the same owner from the same member list, so no coordinator is
// needed, and when an instance dies its keys move to the others once its
// heartbeats stop (within Timeout). While the bucket elects a new leader,
// the heartbeats are still heard on core NATS, so the instances that can
// hear a majority of their service go on owning their keys and only a
// dead instance's keys move.
package membership

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/wait"
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
	// (DefaultTimeout when zero). At least 3 × Interval: an instance
	// stops counting itself live Timeout − Interval after the last
	// heartbeat it saw come back, so that it has stopped owning before
	// the others take its keys.
	Timeout time.Duration
	// Log receives the changes of this instance's liveness and the
	// bucket's repairs (nothing when nil).
	Log *slog.Logger
}

// Group is this instance's view of its service's live members.
type Group struct {
	kv          jetstream.KeyValue
	js          jetstream.JetStream
	service     string
	self        string
	opts        Options
	selfTimeout time.Duration
	log         *slog.Logger
	roster      *Roster
	cancel      context.CancelFunc
	done        chan struct{}

	// beating is set while a heartbeat waits for the bucket's
	// acknowledgement (used by the loop alone).
	beating chan struct{}

	mu sync.Mutex
	// selfUntil is when this instance stops counting itself live: the
	// send time of the newest of its heartbeats that came back through
	// the watch, plus selfTimeout.
	selfUntil time.Time
	// heardUntil is the same for its heartbeats heard on core NATS; it
	// keeps the instance live only while a majority of quorum is heard.
	heardUntil time.Time
	// quorum is the member list of the last time the bucket confirmed
	// this instance (itself included): while the bucket confirms nothing,
	// it stays live only while it hears a majority of these.
	quorum []string
	// onHeard is true while this instance is live on heard heartbeats
	// alone (for the log).
	onHeard bool
	left    bool
	lost    bool // this instance was live and then was not
	members []string
	changes []chan struct{}
}

// ErrInvalidName reports a service or instance name unusable as a KV key.
var ErrInvalidName = errors.New("membership: invalid name")

// ErrInvalidOptions reports Options that cannot keep ownership exclusive.
var ErrInvalidOptions = errors.New("membership: invalid options")

// Join starts heartbeating as instance self of service and watching the
// other members. ctx bounds the join only; Leave stops the group.
//
// This instance counts itself live (is in Members, owns keys) while its
// heartbeats come back through its watch of the bucket: a heartbeat that
// fails, or a watch that delivers nothing, makes it drop itself
// Timeout − Interval after the last heartbeat that came back, before the
// others (which wait Timeout) take its keys; it counts itself live again
// with the first heartbeat that comes back. A missing bucket is created
// again and a watch that ended is started again.
func Join(ctx context.Context, js jetstream.JetStream, service, self string, opts Options) (*Group, error) {
	if !validKeyPart(service) || !validKeyPart(self) {
		return nil, fmt.Errorf("%w: %q/%q", ErrInvalidName, service, self)
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	var kv jetstream.KeyValue
	if err := untilDone(ctx, opts.Log, "opening the membership bucket", func() (err error) {
		kv, err = ensureBucket(ctx, js)
		return err
	}); err != nil {
		return nil, err
	}
	g := &Group{kv: kv, js: js, service: service, self: self, opts: opts, log: opts.Log,
		selfTimeout: opts.Timeout - opts.Interval, done: make(chan struct{})}
	if err := untilDone(ctx, opts.Log, "the first heartbeat", func() error { return g.beat(ctx) }); err != nil {
		return nil, err
	}
	// A watch that sees none of the beats (every Interval) for two
	// intervals is broken: started again.
	g.roster = newRoster(js, service+".*", opts.Timeout, 2*opts.Interval, g.log)
	g.roster.onBeat, g.roster.changed = g.heard, g.recompute
	if err := g.roster.start(ctx); err != nil {
		return nil, err
	}
	g.recompute()
	runCtx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go g.loop(runCtx)
	return g, nil
}

// startRetry is how long Join and WatchRoster wait before trying a failed
// step of their set-up again.
const startRetry = time.Second

// untilDone runs step until it succeeds or ctx ends (then it returns the
// last error), logging each failure: an instance started while JetStream
// is not ready yet (its node just restarted and catching up, a leader
// being elected) waits for it instead of exiting.
func untilDone(ctx context.Context, log *slog.Logger, what string, step func() error) error {
	for {
		err := step()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		if log != nil {
			log.Warn("membership: "+what+" failed; trying again", "err", err)
		}
		if !wait.Sleep(ctx, startRetry) {
			return err
		}
	}
}

func (o Options) withDefaults() (Options, error) {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Timeout < 3*o.Interval {
		return o, fmt.Errorf("%w: Timeout %s must be at least 3 × Interval %s", ErrInvalidOptions, o.Timeout, o.Interval)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o, nil
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

// beat writes a heartbeat whose value is its local send time, so the
// beat that comes back through the watch tells how long this instance
// may count itself live.
func (g *Group) beat(ctx context.Context) error {
	if _, err := g.kv.Put(ctx, g.key(g.self), beatValue()); err != nil {
		return fmt.Errorf("membership heartbeat: %w", err)
	}
	return nil
}

// beatValue is a heartbeat's value: the local send time.
func beatValue() []byte { return []byte(time.Now().UTC().Format(time.RFC3339Nano)) }

// beatAside heartbeats without waiting: the beat is written to the bucket
// aside (beatOrRepair), and while an earlier one still waits for the
// bucket's acknowledgement (a leader election: up to an interval, more
// with the repair) it is only published, so it is still heard on core
// NATS on time (and stored, should the bucket have a leader again).
func (g *Group) beatAside(ctx context.Context) {
	select {
	case <-g.beating:
		g.beating = nil
	default:
		if g.beating != nil {
			if err := g.js.Conn().Publish(bucketSubjectPrefix+g.key(g.self), beatValue()); err != nil {
				g.log.Debug("membership heartbeat failed", "err", err)
			}
			return
		}
	}
	done := make(chan struct{})
	g.beating = done
	go func() {
		defer close(done)
		g.beatOrRepair(ctx)
	}()
}

// beatOrRepair heartbeats within an interval; when that fails it creates
// the bucket if it is missing and heartbeats once more.
func (g *Group) beatOrRepair(ctx context.Context) {
	bctx, cancel := context.WithTimeout(ctx, g.opts.Interval)
	err := g.beat(bctx)
	cancel()
	if err == nil {
		return
	}
	g.log.Debug("membership heartbeat failed", "err", err)
	rctx, cancel := context.WithTimeout(ctx, g.opts.Interval)
	defer cancel()
	if _, err := g.js.KeyValue(rctx, Bucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		return // there, or NATS does not answer: the next tick tries again
	}
	if _, err := ensureBucket(rctx, g.js); err != nil {
		return
	}
	g.log.Warn("membership bucket was missing: created again")
	if err := g.beat(rctx); err != nil {
		g.log.Debug("membership heartbeat failed", "err", err)
	}
}

// heard takes in a heartbeat read from the bucket or heard on core NATS:
// this instance's own one extends its liveness.
func (g *Group) heard(b beat) {
	if b.key != g.key(g.self) || !b.put {
		return
	}
	sent, err := time.Parse(time.RFC3339Nano, string(b.value))
	if err != nil {
		return
	}
	until := sent.Add(g.selfTimeout)
	g.mu.Lock()
	defer g.mu.Unlock()
	last := &g.selfUntil
	if b.heard {
		last = &g.heardUntil
	}
	if until.After(*last) {
		*last = until
	}
}

// loop heartbeats and re-derives the members, so a member whose beats
// stopped drops out after the timeout even when nothing else changes, and
// this instance drops itself when its own stopped coming back.
func (g *Group) loop(ctx context.Context) {
	defer close(g.done)
	beat := time.NewTicker(g.opts.Interval)
	defer beat.Stop()
	check := time.NewTicker(g.opts.Interval / 4)
	defer check.Stop()
	defer func() {
		if g.beating != nil {
			<-g.beating
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			g.beatAside(ctx)
		case <-check.C:
			g.recompute()
		}
	}
}

// recompute derives the live member list and notifies watchers on change.
func (g *Group) recompute() {
	others := slices.DeleteFunc(g.roster.Live(g.service), func(m string) bool { return m == g.self })
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	live := others
	if g.selfLiveLocked(now) {
		live = append(live, g.self)
		slices.Sort(live)
	}
	if now.Before(g.selfUntil) && !g.left {
		g.quorum = live
	}
	g.setMembersLocked(live)
}

// selfLiveLocked reports whether this instance counts itself live at now:
// its heartbeats come back through the watch, or, while the bucket
// confirms none (a leader election), they are heard on core NATS and so
// are those of a majority of the members the bucket last confirmed. An
// instance cut off from the others hears at most a minority, so it stops
// owning Interval × 3/2 after it last heard a majority, before they count
// it dead (Timeout ≥ 3 × Interval after they last heard it, which was no
// more than an interval before it last heard them). The caller holds
// g.mu.
func (g *Group) selfLiveLocked(now time.Time) bool {
	if g.left {
		return false
	}
	if now.Before(g.selfUntil) {
		g.setOnHeardLocked(now, false, 0)
		return true
	}
	heard := 0
	if now.Before(g.heardUntil) {
		for _, m := range g.quorum {
			if m == g.self || g.roster.heardWithin(g.service, m, g.opts.Interval*3/2, now) {
				heard++
			}
		}
	}
	onHeard := 2*heard > len(g.quorum)
	g.setOnHeardLocked(now, onHeard, heard)
	return onHeard
}

// setOnHeardLocked records whether this instance is live on heard
// heartbeats alone at now and logs the change. The caller holds g.mu.
func (g *Group) setOnHeardLocked(now time.Time, onHeard bool, heard int) {
	if onHeard == g.onHeard {
		return
	}
	g.onHeard = onHeard
	if onHeard {
		g.log.Info("membership: the bucket confirms no heartbeat; this instance stays live while it hears a majority of its service on core NATS",
			"service", g.service, "instance", g.self, "heard", heard, "of", len(g.quorum))
	} else if now.Before(g.selfUntil) {
		g.log.Info("membership: the bucket confirms heartbeats again", "service", g.service, "instance", g.self)
	}
}

// setMembersLocked sets the member list and notifies watchers on change.
// The caller holds g.mu.
func (g *Group) setMembersLocked(live []string) {
	if slices.Equal(live, g.members) {
		return
	}
	wasLive, isLive := slices.Contains(g.members, g.self), slices.Contains(live, g.self)
	g.members = live
	switch {
	case wasLive && !isLive && !g.left:
		g.lost = true
		g.log.Warn("membership: no heartbeat came back in time; this instance owns nothing until one does",
			"service", g.service, "instance", g.self, "last_beat_expired", g.selfUntil)
	case !wasLive && isLive && g.lost:
		g.log.Info("membership: heartbeats come back; this instance is live", "service", g.service, "instance", g.self)
	}
	for _, ch := range g.changes {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// currentLocked is the member list, without this instance once its
// liveness expired (even between two checks of the loop). The caller
// holds g.mu.
func (g *Group) currentLocked() []string {
	if slices.Contains(g.members, g.self) && !g.selfLiveLocked(time.Now()) {
		g.setMembersLocked(slices.DeleteFunc(slices.Clone(g.members), func(m string) bool { return m == g.self }))
	}
	return g.members
}

// Self is this instance's name.
func (g *Group) Self() string { return g.self }

// Live reports whether this instance counts itself live, that is whether
// its heartbeats come back. An instance that is not live owns no key.
func (g *Group) Live() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Contains(g.currentLocked(), g.self)
}

// Members is the sorted list of live members, this instance included
// while it is live.
func (g *Group) Members() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.currentLocked())
}

// Owner is the live member that owns key.
func (g *Group) Owner(key string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return Owner(g.currentLocked(), key)
}

// Owns reports whether this instance owns key: never while it is not
// live.
func (g *Group) Owns(key string) bool { return g.Owner(key) == g.self }

// Changes returns a channel that receives a value (coalesced) whenever the
// member list changes, this instance's own liveness included.
func (g *Group) Changes() <-chan struct{} {
	ch := make(chan struct{}, 1)
	g.mu.Lock()
	g.changes = append(g.changes, ch)
	g.mu.Unlock()
	return ch
}

// Leave stops heartbeating, stops owning and deletes this instance's
// entry, so the others take over its keys at once instead of after
// Timeout.
func (g *Group) Leave(ctx context.Context) error {
	g.cancel()
	<-g.done
	g.mu.Lock()
	g.left = true
	g.mu.Unlock()
	g.roster.Stop()
	g.recompute()
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
