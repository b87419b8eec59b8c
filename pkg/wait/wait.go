// Package wait is how vigil waits for a while that a context may cut short
// (retry backoffs, pacing, re-watch delays): one timer, stopped when done.
package wait

import (
	"context"
	"time"
)

// Sleep waits d and reports true, or false when ctx ends first.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
