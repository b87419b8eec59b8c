package intake

import (
	"fmt"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"vigil.dev/pkg/contract"
)

// CommandsPerMinuteLimit names the per-user command rate limit in errors
// and metrics; VIGIL_COMMANDS_PER_MINUTE sets it.
const CommandsPerMinuteLimit = "commands_per_minute"

// ErrRateLimited reports a user over its commands per minute (busy).
var ErrRateLimited = contract.NewKind(contract.ErrBusy, "commands per minute limit reached")

// exemptFromRate reports whether cmd is taken whatever the user's rate:
// pause and cancel only ever reduce a user's work, and an admin's pause
// must get through a tenant's flood.
func exemptFromRate(cmd contract.Command) bool {
	return cmd == contract.CmdPause || cmd == contract.CmdCancel
}

// rateLimits holds one token bucket per user: perMinute tokens that refill
// evenly over a minute, so a user may send perMinute commands at once and
// then one every minute/perMinute. Zero perMinute is no limit.
type rateLimits struct {
	perMinute int
	now       func() time.Time

	mu    sync.Mutex
	users map[string]*rate.Limiter
}

func newRateLimits(perMinute int, now func() time.Time) *rateLimits {
	if now == nil {
		now = time.Now
	}
	return &rateLimits{perMinute: perMinute, now: now, users: map[string]*rate.Limiter{}}
}

// allow takes one of user's tokens, or returns ErrRateLimited naming the
// limit and when the next command will be taken.
func (l *rateLimits) allow(user string) error {
	if l.perMinute <= 0 {
		return nil
	}
	l.mu.Lock()
	lim, ok := l.users[user]
	if !ok {
		lim = rate.NewLimiter(rate.Limit(float64(l.perMinute)/60), l.perMinute)
		l.users[user] = lim
	}
	l.mu.Unlock()
	now := l.now()
	r := lim.ReserveN(now, 1)
	if wait := r.DelayFrom(now); wait > 0 {
		r.CancelAt(now)
		return fmt.Errorf("%w: %s is %d for user %s (VIGIL_COMMANDS_PER_MINUTE); retry in %ds",
			ErrRateLimited, CommandsPerMinuteLimit, l.perMinute, user, int(math.Ceil(wait.Seconds())))
	}
	return nil
}
