package coinbase

import (
	"context"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"vigil.dev/pkg/wait"
)

// pacingHeadroom slows every limiter 5 % below its configured rate. A token
// bucket with burst 1 at exactly N/s puts request N+1 exactly one second
// after request 1, so any network or scheduling jitter would let the
// exchange count N+1 requests in one second; the headroom absorbs that.
const pacingHeadroom = 1.05

// newPacedLimiter returns a limiter that lets through at most perSecond
// events in any one-second window, evenly spaced (burst 1).
func newPacedLimiter(perSecond float64) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(perSecond/pacingHeadroom), 1)
}

// jitteredBackoff returns the delay before retry number step (1, 2, ...):
// base·2^(step-1) capped at maxDelay, then drawn uniformly from its upper
// half so that many clients do not retry in lockstep.
func jitteredBackoff(step int, base, maxDelay time.Duration) time.Duration {
	d := base
	for i := 1; i < step && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	half := d / 2
	return half + rand.N(half+1)
}

// windowMargin widens the one-second window that sendWindow keeps: a
// request recorded as sent may reach the exchange this much later than the
// one N requests after it (goroutine scheduling, a busy machine) without
// the exchange counting N+1 requests in one second.
const windowMargin = 100 * time.Millisecond

// sendWindow is a sliding-window log of the last requests' send times: at
// most limit requests within any one second plus windowMargin. The token
// bucket spaces requests evenly; the window holds the limit even when
// requests that passed the bucket on time leave it late and bunch up.
type sendWindow struct {
	mu    sync.Mutex
	limit int
	sent  []time.Time // the last limit send times, oldest first
}

// newSendWindow allows floor(perSecond) requests (at least one) per window.
func newSendWindow(perSecond float64) *sendWindow {
	return &sendWindow{limit: max(1, int(math.Floor(perSecond)))}
}

// wait blocks until one more request keeps the window within its limit,
// then records the request as sent now.
func (w *sendWindow) wait(ctx context.Context) error {
	for {
		w.mu.Lock()
		now := time.Now()
		if len(w.sent) < w.limit {
			w.sent = append(w.sent, now)
			w.mu.Unlock()
			return nil
		}
		free := w.sent[0].Add(time.Second + windowMargin)
		if !now.Before(free) {
			w.sent = append(w.sent[1:], now)
			w.mu.Unlock()
			return nil
		}
		w.mu.Unlock()
		if !wait.Sleep(ctx, free.Sub(now)) {
			return ctx.Err()
		}
	}
}
