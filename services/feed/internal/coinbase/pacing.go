package coinbase

import (
	"context"
	"math/rand/v2"
	"time"

	"golang.org/x/time/rate"
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

// sleepContext waits for d or until ctx is done; it reports whether the full
// wait elapsed.
func sleepContext(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}
