package service

import (
	"context"
	"sync"
)

// DefaultLaneLimit is Config.LaneLimit when zero.
const DefaultLaneLimit = 16

// laneKey names a lane: one verb of one user (user-less requests share
// the verb's lane of the empty user).
type laneKey struct {
	verb string
	user string
}

// lanes run the requests of each (verb, user) one at a time, in arrival
// order, on a goroutine of that lane's own, so that a verb that is slow
// for one user (a backfill, a recompute of a long series) never delays
// the same verb, or any other, for another user. A NATS subscription
// delivers its messages one at a time, so answering a verb on its
// subscription's goroutine would queue every user behind the slowest.
// Each lane holds at most limit waiting requests; its goroutine ends when
// the lane is empty.
type lanes struct {
	limit int

	mu    sync.Mutex
	byKey map[laneKey][]func()
	idle  idleSignal
}

func newLanes(limit int) *lanes {
	if limit <= 0 {
		limit = DefaultLaneLimit
	}
	return &lanes{limit: limit, byKey: map[laneKey][]func(){}}
}

// run queues f on the lane of key and starts the lane's goroutine if it
// has none; false when the lane already holds limit waiting requests.
func (l *lanes) run(key laneKey, f func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	queue, busy := l.byKey[key]
	// The running request is queue[0]: limit waiting ones besides it.
	if len(queue) > l.limit {
		return false
	}
	l.byKey[key] = append(queue, f)
	if !busy {
		go l.drain(key)
	}
	return true
}

// drain runs the lane's requests until it is empty, then drops it.
func (l *lanes) drain(key laneKey) {
	for {
		l.mu.Lock()
		queue := l.byKey[key]
		if len(queue) == 0 {
			delete(l.byKey, key)
			if len(l.byKey) == 0 {
				l.idle.empty()
			}
			l.mu.Unlock()
			return
		}
		f := queue[0]
		l.mu.Unlock()
		f()
		l.mu.Lock()
		l.byKey[key] = l.byKey[key][1:]
		l.mu.Unlock()
	}
}

// wait waits until every lane is empty or ctx ends.
func (l *lanes) wait(ctx context.Context) error {
	l.mu.Lock()
	return l.idle.wait(ctx, &l.mu, len(l.byKey) == 0)
}

// idleSignal tells waiters when a set of lanes has become empty; the
// mutex of the lanes that hold it guards it.
type idleSignal struct {
	// waiters are closed when the last lane ends.
	waiters []chan struct{}
}

// empty releases the waiters; called, the owner's mutex held, when the
// last lane ended.
func (s *idleSignal) empty() {
	for _, c := range s.waiters {
		close(c)
	}
	s.waiters = nil
}

// wait is called with the owner's mutex mu held, which it unlocks; it
// returns at once when idle (no lane runs), else when empty is called or
// ctx ends.
func (s *idleSignal) wait(ctx context.Context, mu *sync.Mutex, idle bool) error {
	if idle {
		mu.Unlock()
		return nil
	}
	done := make(chan struct{})
	s.waiters = append(s.waiters, done)
	mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
