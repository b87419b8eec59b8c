package membership

import (
	"slices"
	"testing"
	"time"
)

// TestRosterClockStopsWhenNoBeatsArrive checks the roster's clock: beats
// that all stopped at once (the bucket stalled) keep everybody alive for
// the stall allowance; a member whose beats stop while another's go on
// drops out after the timeout; beyond the allowance wall time wins.
func TestRosterClockStopsWhenNoBeatsArrive(t *testing.T) {
	timeout := time.Second
	now := time.Now()
	tests := []struct {
		name string
		seen map[string]time.Duration // age of the last beat
		want []string
	}{
		{"all fresh", map[string]time.Duration{"a": 0, "b": 200 * time.Millisecond}, []string{"a", "b"}},
		{"bucket stalled for longer than the timeout", map[string]time.Duration{"a": 1500 * time.Millisecond, "b": 1800 * time.Millisecond}, []string{"a", "b"}},
		{"one stopped while the other beats", map[string]time.Duration{"a": 0, "b": 1500 * time.Millisecond}, []string{"a"}},
		{"stalled beyond the allowance", map[string]time.Duration{"a": 2500 * time.Millisecond, "b": 3200 * time.Millisecond}, []string{"a"}},
		{"everybody gone", map[string]time.Duration{"a": 3500 * time.Millisecond, "b": 5 * time.Second}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Roster{timeout: timeout, lastSeen: map[string]time.Time{}}
			for instance, age := range tt.seen {
				r.lastSeen["vigil-test."+instance] = now.Add(-age)
			}
			if got := r.Live("vigil-test"); !slices.Equal(got, tt.want) {
				t.Fatalf("Live = %v, want %v", got, tt.want)
			}
		})
	}
}
