package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/wait"
)

// UserState is one user's entry of KV VIGIL_STATE as FollowStates hands it
// over.
type UserState struct {
	// User is the user token of the entry's key.
	User string
	// State is the user's desired state, valid and naming User; zero when
	// Deleted.
	State contract.DesiredState
	// Deleted reports that the entry was deleted or purged, or vanished
	// while the watch was down.
	Deleted bool
	// Revision is the entry's revision in the bucket (0 for a user found
	// gone after a new watch).
	Revision uint64
	// Created is when the entry was written.
	Created time.Time
}

// StateFollower follows KV VIGIL_STATE in the background; see FollowStates.
type StateFollower struct {
	done chan struct{}
}

// Done is closed once the follower has stopped (its bg context ended) and
// the applies in flight have returned.
func (f *StateFollower) Done() <-chan struct{} { return f.done }

// rewatchEvery is how long FollowStates waits before it watches again after
// a watch ended or could not start; checkBucketEvery how often it checks
// that the bucket it watches is still there.
const (
	rewatchEvery     = time.Second
	checkBucketEvery = 2 * time.Second
)

// FollowStates follows the desired states (the function FollowStates)
// for the instance's lifetime: from now until Shutdown reaches this
// point of the reverse order, which then waits for the applies in flight.
func (s *Service) FollowStates(ctx context.Context, js jetstream.JetStream, apply func(context.Context, UserState)) error {
	bg, stop := context.WithCancel(context.Background())
	f, err := FollowStates(ctx, bg, js, s.log, apply)
	if err != nil {
		stop()
		return err
	}
	s.OnShutdown(func(context.Context) error {
		stop()
		<-f.Done()
		return nil
	})
	return nil
}

// FollowStates is every service instance's view of the users' desired
// states. It hands apply every user's current state before it returns, so
// the instance starts converged (ctx bounds that first read and those
// applies), then every change until bg ends. Each user's states are
// applied on a goroutine of that user's own (stateLanes), in order, one at
// a time, so one user's slow apply never delays another user's; a state
// handed over while an earlier one of the same user is still applied
// waits, and a newer one replaces it (apply gets whole states, the newest
// is the one that counts). apply must therefore be safe for concurrent
// calls for different users. When the watch ends (NATS restarted, the
// bucket lost and recreated) it watches again, replaying the current states
// (apply must be idempotent) and reporting as Deleted the users whose entry
// vanished meanwhile. Entries under a bad key, that do not decode (decoded as
// a peer's message: unknown fields are tolerated) or that fail
// DesiredState.Validate are logged and skipped.
func FollowStates(ctx, bg context.Context, js jetstream.JetStream, log *slog.Logger, apply func(context.Context, UserState)) (*StateFollower, error) {
	s := &stateWatch{js: js, log: log, lanes: newStateLanes(apply), known: map[string]bool{}}
	w, created, err := s.watch(bg)
	if err != nil {
		return nil, err
	}
	if err := s.loadCurrent(ctx, w); err != nil {
		_ = w.Stop()
		return nil, err
	}
	f := &StateFollower{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		s.follow(bg, w, created)
		_ = s.lanes.wait(context.Background())
	}()
	return f, nil
}

// stateWatch is FollowStates' state: the users it has handed over as
// present, to report those that vanish while no watch runs.
type stateWatch struct {
	js    jetstream.JetStream
	log   *slog.Logger
	lanes *stateLanes
	known map[string]bool
}

// watch starts a watch of every key of the bucket that lasts until ctx
// ends, and returns it with the creation time of the bucket's stream.
func (s *stateWatch) watch(ctx context.Context) (jetstream.KeyWatcher, time.Time, error) {
	kv, err := s.js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("kv %s: %w", contract.BucketState, err)
	}
	created, err := s.bucketCreated(ctx)
	if err != nil {
		return nil, time.Time{}, err
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("watch kv %s: %w", contract.BucketState, err)
	}
	return w, created, nil
}

// stateStream is the stream that holds the bucket VIGIL_STATE.
const stateStream = "KV_" + contract.BucketState

// bucketCreated is when the bucket's stream was created: a bucket deleted
// and created again has a new time, and a watch of the old one may never
// end by itself. One stream info request.
func (s *stateWatch) bucketCreated(ctx context.Context) (time.Time, error) {
	st, err := s.js.Stream(ctx, stateStream)
	if err != nil {
		return time.Time{}, fmt.Errorf("kv %s: %w", contract.BucketState, err)
	}
	return st.CachedInfo().Created, nil
}

// sameBucket reports whether the bucket still exists and is the one created
// at created; another error (NATS unreachable) counts as the same, the
// watch recovers from that by itself.
func (s *stateWatch) sameBucket(ctx context.Context, created time.Time) bool {
	now, err := s.bucketCreated(ctx)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return false
	}
	return err != nil || now.Equal(created)
}

// errWatchEnded is returned when a watch ends before its current values are
// in.
var errWatchEnded = errors.New("the watch ended")

// loadCurrent hands over w's current values, up to the marker that ends
// them, then reports as deleted the known users that were not among them,
// and waits until all of that is applied.
func (s *stateWatch) loadCurrent(ctx context.Context, w jetstream.KeyWatcher) error {
	present := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("watch kv %s: %w", contract.BucketState, errWatchEnded)
			}
			if e == nil {
				for user := range s.known {
					if !present[user] {
						s.handOver(ctx, UserState{User: user, Deleted: true})
					}
				}
				return s.lanes.wait(ctx)
			}
			if user, ok := s.handle(ctx, e); ok {
				present[user] = true
			}
		}
	}
}

// follow hands over changes until ctx ends, watching again whenever a watch
// ends or its bucket was replaced.
func (s *stateWatch) follow(ctx context.Context, w jetstream.KeyWatcher, created time.Time) {
	for {
		s.followOne(ctx, w, created)
		_ = w.Stop()
		for {
			if !wait.Sleep(ctx, rewatchEvery) {
				return
			}
			var err error
			if w, created, err = s.watch(ctx); err == nil {
				if err = s.loadCurrent(ctx, w); err == nil {
					s.log.Info("following the desired states again")
					break
				}
				_ = w.Stop()
			}
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("watching the desired states failed, retrying", "err", err)
		}
	}
}

// followOne hands over w's updates until w ends, its bucket is found
// replaced (checked every checkBucketEvery) or ctx ends.
func (s *stateWatch) followOne(ctx context.Context, w jetstream.KeyWatcher, created time.Time) {
	check := time.NewTicker(checkBucketEvery)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				s.log.Warn("the desired state watch ended, watching again")
				return
			}
			if e != nil {
				s.handle(ctx, e)
			}
		case <-check.C:
			if !s.sameBucket(ctx, created) {
				s.log.Warn("the desired state bucket was deleted or replaced, watching again")
				return
			}
		}
	}
}

// handle checks one entry and hands it over; it reports the entry's user
// and whether the user is present (a valid put).
func (s *stateWatch) handle(ctx context.Context, e jetstream.KeyValueEntry) (string, bool) {
	user, err := contract.UserFromStateKey(e.Key())
	if err != nil {
		s.log.WarnContext(ctx, "desired state under a bad key ignored", "key", e.Key(), "err", err)
		return "", false
	}
	us := UserState{User: user, Revision: e.Revision(), Created: e.Created()}
	if e.Operation() != jetstream.KeyValuePut {
		us.Deleted = true
		s.handOver(ctx, us)
		return user, false
	}
	if us.State, err = contract.DecodePeer[contract.DesiredState](e.Value()); err == nil {
		err = us.State.ValidateFor(user)
	}
	if err != nil {
		s.log.WarnContext(ctx, "desired state ignored", "user", user, "revision", e.Revision(), "err", err)
		return user, s.known[user]
	}
	s.handOver(ctx, us)
	return user, true
}

// handOver queues us on its user's lane and keeps track of the present
// users.
func (s *stateWatch) handOver(ctx context.Context, us UserState) {
	if us.Deleted {
		delete(s.known, us.User)
	} else {
		s.known[us.User] = true
	}
	s.lanes.hand(ctx, us)
}

// maxConcurrentApplies bounds how many users' states are applied at once
// (at start every user's is handed over together): one slow user takes
// one of them, the others go on.
const maxConcurrentApplies = 8

// stateLanes apply each user's states on a goroutine of that user's own,
// one at a time and in order, at most maxConcurrentApplies users at once;
// while one is applied, at most one more waits (the newest handed over).
// A lane's goroutine ends when it has nothing left.
type stateLanes struct {
	apply func(context.Context, UserState)
	slots chan struct{}

	mu sync.Mutex
	// next holds, per user with a lane, the state waiting behind the
	// one being applied (nil: none).
	next map[string]*queuedState
	idle idleSignal
}

// queuedState is a state waiting on its lane, with the context it was
// handed over in.
type queuedState struct {
	ctx context.Context
	us  UserState
}

func newStateLanes(apply func(context.Context, UserState)) *stateLanes {
	return &stateLanes{apply: apply, slots: make(chan struct{}, maxConcurrentApplies), next: map[string]*queuedState{}}
}

// hand queues us on its user's lane, replacing a state that waits there,
// and starts the lane when it is idle.
func (l *stateLanes) hand(ctx context.Context, us UserState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, running := l.next[us.User]; running {
		l.next[us.User] = &queuedState{ctx: ctx, us: us}
		return
	}
	l.next[us.User] = nil
	go l.run(ctx, us)
}

// run applies us, then whatever waits on its user's lane, until nothing
// does.
func (l *stateLanes) run(ctx context.Context, us UserState) {
	for {
		l.slots <- struct{}{}
		l.apply(ctx, us)
		<-l.slots
		l.mu.Lock()
		q := l.next[us.User]
		if q == nil {
			delete(l.next, us.User)
			if len(l.next) == 0 {
				l.idle.empty()
			}
			l.mu.Unlock()
			return
		}
		l.next[us.User] = nil
		l.mu.Unlock()
		ctx, us = q.ctx, q.us
	}
}

// wait waits until every lane is idle, or ctx ends.
func (l *stateLanes) wait(ctx context.Context) error {
	l.mu.Lock()
	return l.idle.wait(ctx, &l.mu, len(l.next) == 0)
}
