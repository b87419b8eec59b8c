package monitor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
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

// recorder models VIGIL_ALERTS and alert_events in memory: the stream keeps
// the first message of each alert id (its duplicate window), the table the
// first row. While down, a batch fails after its first reach alerts reached
// the stream (len(alerts) or more: all were published, the insert failed).
type recorder struct {
	mu       sync.Mutex
	down     bool
	reach    int
	attempts int
	stream   []string
	ids      map[string]bool
}

func (r *recorder) Record(_ context.Context, alerts []record.Alert) ([]bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts++
	for i, a := range alerts {
		if r.down && i >= r.reach {
			break
		}
		if !slices.Contains(r.stream, a.ID) {
			r.stream = append(r.stream, a.ID)
		}
	}
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

// set makes the recorder fail after reach alerts of each batch, or work.
func (r *recorder) set(down bool, reach int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down, r.reach = down, reach
}

// waitTries waits until Record was called n times.
func (r *recorder) waitTries(t *testing.T, n int) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.attempts < n {
			return fmt.Errorf("%d attempts to record, want %d", r.attempts, n)
		}
		return nil
	})
}

// recorded is the stream's alert ids in order and the table's, sorted.
func (r *recorder) recorded() (stream, table []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.stream), slices.Sorted(maps.Keys(r.ids))
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

// owner owns every user while owns is set, except those in lost.
type owner struct {
	owns atomic.Bool
	mu   sync.Mutex
	lost map[string]bool
}

func (o *owner) Owns(user string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.owns.Load() && !o.lost[user]
}

// lose makes another instance own user, or this one again.
func (o *owner) lose(user string, lost bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.lost == nil {
		o.lost = map[string]bool{}
	}
	o.lost[user] = lost
}

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
			m, err := monitor.New(monitor.Deps{Recorder: rec, Snapshots: mem, History: noHistory{}, Ownership: own},
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
			rec.set(true, 0)
			work, cancel := context.WithCancel(ctx)
			defer cancel()
			done := make(chan []error, 1)
			go func() { done <- m.Handle(work, update(1, 75)) }()
			rec.waitTries(t, 3)
			tc.abandon(cancel, own)
			if errs := <-done; len(errs) != 1 || !errors.Is(errs[0], tc.want) {
				t.Fatalf("Handle: %v, want %v", errs, tc.want)
			}
			if got := mem.snaps["alice"]; got.Rules["rsi-hot"] != saved.Rules["rsi-hot"] {
				t.Fatalf("the memory of an unrecorded firing was saved: %+v, want %+v", got, saved)
			}
			// Delivered again once the recorder is back, the update fires.
			rec.set(false, 0)
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

func TestAFailedBatchIsDeliveredAgainAndRecordedOnce(t *testing.T) {
	level, price := 70.0, 100.0
	rsiHot := contract.Rule{ID: "rsi-hot", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleCross,
		SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}, Op: contract.OpCrossesAbove, Value: &level}
	priceHigh := contract.Rule{ID: "price-high", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleThreshold,
		SeriesRef: contract.SeriesRef{Indicator: "price"}, Op: contract.OpAbove, Value: &price}
	update := func(user string, bar int, rsi, close float64) monitor.Update {
		return monitor.Update{IndicatorUpdate: contract.IndicatorUpdate{
			SeriesID: contract.SeriesID{User: user, UserID: 1, ExchangeID: 2, Symbol: "BTC-USD", Timeframe: contract.TF1h},
			Start:    base + int64(bar)*3600, Closed: true, Version: 1, Close: close,
			Values: map[string]contract.Fields{"rsi_14": {"value": rsi}}}}
	}
	// One batch of two users, each firing both rules on bar 1: four alerts,
	// alice's first.
	batch := []monitor.Update{
		update("bob", 0, 60, 99), update("alice", 0, 60, 99), update("alice", 1, 75, 101),
		update("bob", 1, 75, 101), update("alice", 2, 60, 99),
	}
	want := []string{
		contract.AlertID("alice", "rsi-hot", base+3600), contract.AlertID("alice", "price-high", base+3600),
		contract.AlertID("bob", "rsi-hot", base+3600), contract.AlertID("bob", "price-high", base+3600),
	}
	for _, tc := range []struct {
		name string
		// reach is how many of the batch's alerts reach the stream on each
		// failed attempt (4: all, then the insert fails).
		reach int
		// abandon ends the retries: the instance stops, or bob moves to
		// another instance, which leaves alice's alerts to be retried.
		abandon func(cancel context.CancelFunc, o *owner)
		// failed are the users whose updates must be delivered again.
		failed []string
		want   error
	}{
		{"no publish acknowledged, instance stops", 0, func(cancel context.CancelFunc, _ *owner) { cancel() }, []string{"alice", "bob"}, context.Canceled},
		{"one publish acknowledged, instance stops", 1, func(cancel context.CancelFunc, _ *owner) { cancel() }, []string{"alice", "bob"}, context.Canceled},
		{"three publishes acknowledged, instance stops", 3, func(cancel context.CancelFunc, _ *owner) { cancel() }, []string{"alice", "bob"}, context.Canceled},
		{"insert fails, instance stops", 4, func(cancel context.CancelFunc, _ *owner) { cancel() }, []string{"alice", "bob"}, context.Canceled},
		{"insert fails, bob moves away", 4, func(_ context.CancelFunc, o *owner) { o.lose("bob", true) }, []string{"bob"}, monitor.ErrNotOwner},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{ids: map[string]bool{}}
			mem := &memory{snaps: map[string]rules.Snapshot{}}
			own := &owner{}
			own.owns.Store(true)
			now := time.Unix(base+2*3600+1, 0)
			m, err := monitor.New(monitor.Deps{Recorder: rec, Snapshots: mem, History: noHistory{}, Ownership: own},
				monitor.Options{Now: func() time.Time { return now }, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
					RetryBackoff: time.Millisecond, MaxRetryBackoff: 5 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			for _, user := range []string{"alice", "bob"} {
				st := contract.DesiredState{User: user, UserID: 1, ExchangeID: 2, Mode: contract.ModePositionMonitor,
					Settings: contract.Settings{Rules: map[contract.Mode][]contract.Rule{contract.ModePositionMonitor: {rsiHot, priceHigh}}}}
				if err := m.SetState(ctx, st); err != nil {
					t.Fatal(err)
				}
			}
			initial := map[string]rules.Snapshot{"alice": mem.snaps["alice"], "bob": mem.snaps["bob"]}
			rec.set(true, tc.reach)
			work, cancel := context.WithCancel(ctx)
			defer cancel()
			done := make(chan []error, 1)
			go func() { done <- m.Handle(work, batch...) }()
			rec.waitTries(t, 3)
			tc.abandon(cancel, own)
			if len(tc.failed) == 1 {
				// Bob's alerts are dropped from the retries; alice's are
				// recorded once the recorder is back.
				rec.waitTries(t, 6)
				rec.set(false, 0)
			}
			errs := <-done
			if len(errs) != len(batch) {
				t.Fatalf("Handle returned %d errors, want one per update: %v", len(errs), errs)
			}
			var again []monitor.Update
			for i, u := range batch {
				if failed := slices.Contains(tc.failed, u.User); failed != errors.Is(errs[i], tc.want) {
					t.Fatalf("update %d of %s: error %v, want %v: %t", i, u.User, errs[i], tc.want, failed)
				}
				if errs[i] != nil {
					again = append(again, u)
				}
			}
			for _, user := range tc.failed {
				if got, want := mem.snaps[user], initial[user]; !maps.Equal(got.Rules, want.Rules) {
					t.Fatalf("the memory of %s's unrecorded batch was saved: %+v, want %+v", user, got, want)
				}
			}
			// The failed updates are delivered again, to this instance
			// once it owns the users again and the recorder works.
			rec.set(false, 0)
			own.owns.Store(true)
			own.lose("bob", false)
			if errs := m.Handle(ctx, again...); errs != nil {
				t.Fatalf("delivered again: %v", errs)
			}
			stream, table := rec.recorded()
			if !slices.Equal(slices.Sorted(slices.Values(stream)), slices.Sorted(slices.Values(want))) || !slices.Equal(table, slices.Sorted(slices.Values(want))) {
				t.Fatalf("stream %v and table %v, want each of %v once", stream, table, want)
			}
			for _, user := range []string{"alice", "bob"} {
				if s := m.Status()[user]; s.AlertsFired != 2 {
					t.Errorf("%s fired %d alerts, want 2", user, s.AlertsFired)
				}
				if mem.snaps[user].Rules["rsi-hot"].LastFiredBar != base+3600 {
					t.Errorf("%s's saved memory %+v lacks the firing on bar 1", user, mem.snaps[user])
				}
			}
		})
	}
}

func TestAUserWithoutAlertsIsNotHeldByAnotherUsersRecording(t *testing.T) {
	rec := &recorder{ids: map[string]bool{}}
	mem := &memory{snaps: map[string]rules.Snapshot{}}
	own := &owner{}
	own.owns.Store(true)
	now := time.Unix(base+2*3600+1, 0)
	m, err := monitor.New(monitor.Deps{Recorder: rec, Snapshots: mem, History: noHistory{}, Ownership: own},
		monitor.Options{Now: func() time.Time { return now }, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
			RetryBackoff: time.Millisecond, MaxRetryBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	level := 70.0
	rule := contract.Rule{ID: "rsi-hot", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleCross,
		SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}, Op: contract.OpCrossesAbove, Value: &level}
	state := func(user string, paused bool) contract.DesiredState {
		return contract.DesiredState{User: user, UserID: 1, ExchangeID: 2, Mode: contract.ModePositionMonitor, Paused: paused,
			Settings: contract.Settings{Rules: map[contract.Mode][]contract.Rule{contract.ModePositionMonitor: {rule}}}}
	}
	update := func(user string, bar int, rsi float64) monitor.Update {
		return monitor.Update{IndicatorUpdate: contract.IndicatorUpdate{
			SeriesID: contract.SeriesID{User: user, UserID: 1, ExchangeID: 2, Symbol: "BTC-USD", Timeframe: contract.TF1h},
			Start:    base + int64(bar)*3600, Closed: true, Version: 1, Values: map[string]contract.Fields{"rsi_14": {"value": rsi}}}}
	}
	ctx := context.Background()
	for _, user := range []string{"alice", "bob"} {
		if err := m.SetState(ctx, state(user, false)); err != nil {
			t.Fatal(err)
		}
	}
	rec.set(true, 0)
	done := make(chan []error, 1)
	// Alice fires on bar 1 and cannot be recorded; bob fires nothing.
	go func() {
		done <- m.Handle(ctx, update("alice", 0, 60), update("bob", 0, 60), update("alice", 1, 75), update("bob", 1, 65))
	}()
	rec.waitTries(t, 3)
	paused := make(chan error, 1)
	go func() { paused <- m.SetState(ctx, state("bob", true)) }()
	select {
	case err := <-paused:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pausing bob waited for alice's alerts to be recorded")
	}
	if s := m.Status()["bob"]; !s.Paused || s.Evaluations != 2 {
		t.Fatalf("bob's status %+v, want paused after 2 evaluations", s)
	}
	if mem.snaps["bob"].Rules["rsi-hot"].Last.Start != base+3600 {
		t.Fatalf("bob's memory %+v was not saved with bar 1", mem.snaps["bob"])
	}
	rec.set(false, 0)
	if errs := <-done; errs != nil {
		t.Fatalf("Handle: %v", errs)
	}
	if s := m.Status()["alice"]; s.AlertsFired != 1 {
		t.Fatalf("alice's status %+v, want 1 alert fired", s)
	}
}
