package monitor_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/alerts/internal/monitor"
	"vigil.dev/services/alerts/internal/record"
	"vigil.dev/services/alerts/internal/rules"
)

// These tests drive the monitor through its ports with in-memory stand-ins
// to reach what the service's integration tests cannot time: a recording
// that fails until the work is abandoned. Everything else is covered
// against real NATS, Redis and Postgres in package alerts.

// errDown is the stand-in recorder's failure.
var errDown = errors.New("recorder down")

// recorder records alert ids in memory, failing while down is set.
type recorder struct {
	mu       sync.Mutex
	down     bool
	attempts int
	ids      map[string]bool
}

func (r *recorder) Record(_ context.Context, alerts []record.Alert) ([]bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts++
	if r.down {
		return nil, errDown
	}
	fresh := make([]bool, len(alerts))
	for i, a := range alerts {
		fresh[i] = !r.ids[a.ID]
		r.ids[a.ID] = true
	}
	return fresh, nil
}

func (r *recorder) set(down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = down
}

func (r *recorder) tries() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.attempts
}

// memory keeps snapshots in a map.
type memory struct {
	mu    sync.Mutex
	snaps map[string]rules.Snapshot
}

func (m *memory) Load(_ context.Context, user string) (rules.Snapshot, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.snaps[user]
	return s, ok, nil
}

func (m *memory) Save(_ context.Context, user string, s rules.Snapshot) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.snaps[user] = s
	return nil
}

// noHistory has no stored bars.
type noHistory struct{}

func (noHistory) ClosedBars(context.Context, contract.SeriesID, []string, int64) ([]contract.IndicatorUpdate, error) {
	return nil, nil
}

// noHooks drops notifications.
type noHooks struct{}

func (noHooks) Notify(context.Context, contract.WebhookSettings, contract.Alert) error { return nil }

// owner owns every user while owns is set.
type owner struct{ owns atomic.Bool }

func (o *owner) Owns(string) bool { return o.owns.Load() }

const base = int64(1_767_225_600)

func TestAFailedRecordingIsRolledBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		// abandon ends the retries: the instance stops or loses the user.
		abandon func(cancel context.CancelFunc, o *owner)
		want    error
	}{
		{"instance stops", func(cancel context.CancelFunc, _ *owner) { cancel() }, context.Canceled},
		{"user moves away", func(_ context.CancelFunc, o *owner) { o.owns.Store(false) }, monitor.ErrNotOwner},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{ids: map[string]bool{}}
			mem := &memory{snaps: map[string]rules.Snapshot{}}
			own := &owner{}
			own.owns.Store(true)
			now := time.Unix(base+2*3600+1, 0)
			m, err := monitor.New(monitor.Deps{Recorder: rec, Snapshots: mem, History: noHistory{}, Notifier: noHooks{}, Ownership: own},
				monitor.Options{Now: func() time.Time { return now }, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
					RetryBackoff: time.Millisecond, MaxRetryBackoff: 5 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			level := 70.0
			rule := contract.Rule{ID: "rsi-hot", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleCross,
				SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}, Op: contract.OpCrossesAbove, Value: &level}
			st := contract.DesiredState{User: "alice", UserID: 1, ExchangeID: 2, Mode: contract.ModePositionMonitor,
				Settings: contract.Settings{Rules: map[contract.Mode][]contract.Rule{contract.ModePositionMonitor: {rule}}}}
			ctx := context.Background()
			if err := m.SetState(ctx, st); err != nil {
				t.Fatal(err)
			}
			update := func(bar int, rsi float64) monitor.Update {
				return monitor.Update{IndicatorUpdate: contract.IndicatorUpdate{SeriesID: contract.SeriesID{User: "alice", UserID: 1, ExchangeID: 2, Symbol: "BTC-USD", Timeframe: contract.TF1h},
					Start: base + int64(bar)*3600, Closed: true, Version: 1, Values: map[string]contract.Fields{"rsi_14": {"value": rsi}}}}
			}
			if errs := m.Handle(ctx, update(0, 60)); errs != nil {
				t.Fatal(errs)
			}
			saved := mem.snaps["alice"]
			rec.set(true)
			work, cancel := context.WithCancel(ctx)
			defer cancel()
			done := make(chan []error, 1)
			go func() { done <- m.Handle(work, update(1, 75)) }()
			for rec.tries() < 3 {
				time.Sleep(time.Millisecond)
			}
			tc.abandon(cancel, own)
			if errs := <-done; len(errs) != 1 || !errors.Is(errs[0], tc.want) {
				t.Fatalf("Handle: %v, want %v", errs, tc.want)
			}
			if got := mem.snaps["alice"]; got.Rules["rsi-hot"] != saved.Rules["rsi-hot"] {
				t.Fatalf("the memory of an unrecorded firing was saved: %+v, want %+v", got, saved)
			}
			// Delivered again once the recorder is back, the update fires.
			rec.set(false)
			own.owns.Store(true)
			if errs := m.Handle(ctx, update(1, 75)); errs != nil {
				t.Fatal(errs)
			}
			if id := contract.AlertID("alice", "rsi-hot", base+3600); !rec.ids[id] {
				t.Fatalf("alert %s was lost after the failed recording (recorded %v)", id, rec.ids)
			}
			if s := m.Status()["alice"]; s.AlertsFired != 1 || s.Evaluations != 3 {
				t.Fatalf("status %+v, want 3 evaluations and 1 alert", s)
			}
		})
	}
}
