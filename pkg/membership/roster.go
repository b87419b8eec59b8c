package membership

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// stallFactor bounds, in timeouts, how long a roster that receives no
// heartbeat at all keeps its members alive.
const stallFactor = 2

// Roster follows the heartbeats in Bucket without joining: it knows which
// instances of every service are live. Control uses it to expect an answer
// from an instance that died moments ago (and no longer answers $SRV.PING)
// and name it as missing; Group uses it for its own service.
//
// The watch heals itself: when it ends or delivers nothing for a while
// (a NATS restart lost its consumer, the bucket was deleted and created
// anew), the roster creates the bucket if it is missing and watches it
// again from the latest entry of every key.
//
// Beside the watch, the roster hears the heartbeats as they are published,
// on a core NATS subscription to the bucket's subjects: core delivery
// needs no stream leader, so while the bucket elects one (its leader's
// server died) the beats of the instances still running keep arriving and
// only a dead instance's stop. A beat heard that way keeps a member the
// watch already knows alive; it never adds one (a member is first known
// through the bucket, which takes a quorum of servers to write).
type Roster struct {
	js         jetstream.JetStream
	keys       string
	timeout    time.Duration
	staleAfter time.Duration
	log        *slog.Logger
	// onBeat is called (outside the lock) with every heartbeat read or
	// heard, before changed.
	onBeat func(beat)
	// changed is called (outside the lock) after every heartbeat change.
	changed func()
	cancel  context.CancelFunc
	done    chan struct{}
	sub     *nats.Subscription
	// started receives the watches started aside; starting counts those
	// not received yet (both used by the loop alone).
	started  chan watchResult
	starting int

	mu       sync.Mutex
	lastSeen map[string]time.Time // key <service>.<instance>
	// lastHeard is when a beat of a known key was last heard on core
	// NATS (local receive time): the evidence Group's majority rule
	// counts, never a beat read from the bucket (a watch started again
	// reads stored beats whose times carry the clock offset's error).
	lastHeard map[string]time.Time
}

// beat is one heartbeat (or deletion) of a key, read from the bucket or
// heard on its subject.
type beat struct {
	key   string
	value []byte // the sender's local send time (RFC 3339)
	put   bool   // false: the key was deleted or purged
	// heard is true for a beat heard on core NATS, false for one the
	// bucket stored and the watch delivered.
	heard bool
}

// WatchRoster starts following every service's heartbeats. An instance
// counts as dead timeout after its last heartbeat (DefaultTimeout when
// zero). Stop ends the watch.
func WatchRoster(ctx context.Context, js jetstream.JetStream, timeout time.Duration) (*Roster, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	r := newRoster(js, ">", timeout, timeout, nil)
	if err := r.start(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// newRoster is a roster of the keys matching keys that watches again after
// staleAfter without an update.
func newRoster(js jetstream.JetStream, keys string, timeout, staleAfter time.Duration, log *slog.Logger) *Roster {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Roster{js: js, keys: keys, timeout: timeout, staleAfter: staleAfter, log: log,
		started: make(chan watchResult, maxWatchesStarting), lastSeen: map[string]time.Time{}, lastHeard: map[string]time.Time{}}
}

// start takes in the current heartbeats before returning, so Live is right
// at once, and follows them until Stop, not until ctx ends. A failed first
// watch is tried again until ctx ends.
func (r *Roster) start(ctx context.Context) error {
	sub, err := r.js.Conn().Subscribe(bucketSubjectPrefix+r.keys, r.hear)
	if err != nil {
		return fmt.Errorf("membership: hearing the heartbeats: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	var watcher jetstream.KeyWatcher
	if err := untilDone(ctx, r.log, "watching the heartbeats", func() (err error) {
		watcher, err = r.watch(ctx, runCtx)
		return err
	}); err != nil {
		cancel()
		r.stopStarting()
		_ = sub.Unsubscribe()
		return err
	}
	r.cancel, r.done, r.sub = cancel, make(chan struct{}), sub
	go r.loop(runCtx, watcher)
	return nil
}

// watch creates the bucket if it is missing, starts a watch (living as
// long as runCtx) and reads the latest heartbeat of every key. ctx bounds
// the set-up.
func (r *Roster) watch(ctx, runCtx context.Context) (jetstream.KeyWatcher, error) {
	kv, err := openBucket(ctx, r.js)
	if err != nil {
		return nil, err
	}
	offset := serverClockOffset(ctx, r.js)
	watcher, err := r.startWatch(ctx, runCtx, kv)
	if err != nil {
		return nil, err
	}
	// Entries from before the watch carry the server's time, so the last
	// beat of a dead instance does not look fresh; live updates use the
	// local receive time (host clocks may differ).
	for {
		select {
		case <-ctx.Done():
			stopWatcher(watcher)
			return nil, fmt.Errorf("membership watch: reading the heartbeats: %w", ctx.Err())
		case e, ok := <-watcher.Updates():
			if !ok {
				return nil, fmt.Errorf("membership watch: ended while reading the heartbeats")
			}
			if e == nil {
				return watcher, nil
			}
			seen := e.Created().Add(offset)
			if now := time.Now(); seen.After(now) {
				seen = now
			}
			r.observe(entryBeat(e), seen)
		}
	}
}

// entryBeat is the beat of an entry the watch delivered.
func entryBeat(e jetstream.KeyValueEntry) beat {
	return beat{key: e.Key(), value: e.Value(), put: e.Operation() == jetstream.KeyValuePut}
}

// hear takes in a heartbeat published on the bucket's subjects, stored or
// not (core NATS delivers it whether or not the stream has a leader).
func (r *Roster) hear(msg *nats.Msg) {
	key, ok := strings.CutPrefix(msg.Subject, bucketSubjectPrefix)
	if !ok {
		return
	}
	op := msg.Header.Get(kvOperationHeader)
	r.observe(beat{key: key, value: msg.Data, put: op == "", heard: true}, time.Now())
}

// watchResult is what kv.Watch returned.
type watchResult struct {
	watcher jetstream.KeyWatcher
	err     error
}

// maxWatchesStarting bounds the watches being started at once.
const maxWatchesStarting = 8

// startWatch starts a watch of kv living as long as runCtx, waiting at
// most until ctx ends. kv.Watch itself waits up to the client's default
// API timeout (5s) for a server that does not answer, far longer than a
// heartbeat interval, and a request lost to a cut connection is never
// answered: so it runs aside, each attempt starts one more (up to
// maxWatchesStarting) and takes the first that succeeds, even one an
// earlier attempt gave up on; the loop stops those that come too late.
func (r *Roster) startWatch(ctx, runCtx context.Context, kv jetstream.KeyValue) (jetstream.KeyWatcher, error) {
	if r.starting < maxWatchesStarting {
		r.starting++
		go func() {
			watcher, err := kv.Watch(runCtx, r.keys)
			r.started <- watchResult{watcher, err}
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("membership watch: %w", ctx.Err())
		case res := <-r.started:
			r.starting--
			if res.err != nil {
				return nil, fmt.Errorf("membership watch: %w", res.err)
			}
			return res.watcher, nil
		}
	}
}

// stopStarting stops the watches still being started, aside.
func (r *Roster) stopStarting() {
	n := r.starting
	r.starting = 0
	go func() {
		for range n {
			stopWatcher((<-r.started).watcher)
		}
	}()
}

// stopWatcher stops watcher aside (its unsubscribe deletes the consumer,
// which waits for a server that may not answer) and drains what it still
// delivers, so its delivery goroutine, blocked on a full channel, can end.
func stopWatcher(watcher jetstream.KeyWatcher) {
	if watcher == nil {
		return
	}
	go func() { _ = watcher.Stop() }()
	go func() {
		for range watcher.Updates() {
		}
	}()
}

func (r *Roster) loop(ctx context.Context, watcher jetstream.KeyWatcher) {
	defer close(r.done)
	defer func() {
		stopWatcher(watcher)
		r.stopStarting()
	}()
	check := time.NewTicker(r.staleAfter / 2)
	defer check.Stop()
	lastUpdate := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-watcher.Updates():
			if ok && e == nil {
				continue
			}
			if ok {
				lastUpdate = time.Now()
				r.observe(entryBeat(e), lastUpdate)
				continue
			}
			r.log.Warn("membership watch ended; watching again")
		case <-check.C:
			r.prune()
			if time.Since(lastUpdate) <= r.staleAfter {
				continue
			}
			r.log.Info("membership watch delivered no heartbeat; watching again", "for", time.Since(lastUpdate).Round(time.Millisecond))
		}
		stopWatcher(watcher)
		if watcher = r.rewatch(ctx); watcher == nil {
			return
		}
		lastUpdate = time.Now()
	}
}

// rewatch watches again until it succeeds (nil when ctx ends first).
func (r *Roster) rewatch(ctx context.Context) jetstream.KeyWatcher {
	for {
		attempt, cancel := context.WithTimeout(ctx, r.staleAfter)
		watcher, err := r.watch(attempt, ctx)
		cancel()
		if err == nil {
			if r.changed != nil {
				r.changed()
			}
			return watcher
		}
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("membership watch failed; trying again", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(r.staleAfter / 2):
		}
	}
}

// observe takes in one heartbeat (or deletion) seen at seen. A key keeps
// the newest time it was seen at: a watch started again reads the
// bucket's stored beats, which must not make a member older than the
// beats already seen. A key missing from a bucket read anew (deleted and
// created again) keeps its time and times out as usual. A beat heard on
// core NATS only keeps a known key alive.
func (r *Roster) observe(b beat, seen time.Time) {
	if r.onBeat != nil {
		r.onBeat(b)
	}
	r.mu.Lock()
	last, known := r.lastSeen[b.key]
	switch {
	case !b.put:
		delete(r.lastSeen, b.key)
		delete(r.lastHeard, b.key)
	case b.heard && !known:
	default:
		if seen.After(last) {
			r.lastSeen[b.key] = seen
		}
		if b.heard {
			r.lastHeard[b.key] = seen
		}
	}
	r.mu.Unlock()
	if r.changed != nil {
		r.changed()
	}
}

// prune forgets the instances whose heartbeats have expired from the
// bucket: per-process names never come back.
func (r *Roster) prune() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for key, seen := range r.lastSeen {
		if time.Since(seen) > bucketTTL+r.timeout {
			delete(r.lastSeen, key)
			delete(r.lastHeard, key)
		}
	}
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

// heardWithin reports whether a beat of service's instance was heard on
// core NATS within d before now.
func (r *Roster) heardWithin(service, instance string, d time.Duration, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	heard, ok := r.lastHeard[service+"."+instance]
	return ok && now.Sub(heard) <= d
}

// Stop ends the watch.
func (r *Roster) Stop() {
	_ = r.sub.Unsubscribe()
	r.cancel()
	<-r.done
}
