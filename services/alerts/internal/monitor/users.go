package monitor

// This file: users and ownership (gain, catch-up, lose), the desired
// state converged, pause, resume and apply (the package doc's "Users and
// ownership" and "Pause, resume, apply").

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/alerts/internal/rules"
)

// user is one user's desired state and, while owned, engine.
type user struct {
	token string

	// mu serialises everything below and the work on the user.
	mu      sync.Mutex
	known   bool
	desired contract.DesiredState
	// active is true while this instance runs the user's engine.
	active bool
	paused bool
	engine *rules.Engine
	// applied is the rule set the engine runs; attempted the last one
	// tried, which may have been rejected with rulesErr.
	applied   ruleSet
	attempted ruleSet
	rulesErr  error
	// saved is the engine memory last loaded from or saved to Snapshots.
	saved rules.Snapshot

	// info mirrors the fields above for Status, which must not wait for
	// a user whose work is in progress.
	info        atomic.Pointer[contract.AlertsUserStatus]
	evaluations atomic.Int64
	fired       atomic.Int64
	lastEval    atomic.Int64 // UNIX nanoseconds, 0 before the first
	lastBar     atomic.Int64 // start of the newest bar evaluated, 0 before the first
	suppressed  atomic.Int64 // alerts over MaxAlertsPerMinute, not recorded

	// alertMinute is the minute (UNIX seconds / 60) alertsInMinute counts.
	alertMinute    int64
	alertsInMinute int
}

// ruleSet is the rules of one mode at one settings revision.
type ruleSet struct {
	mode     contract.Mode
	revision int64
	rules    []contract.Rule
}

// sameRules reports whether r and o hold the same mode and rules.
func (r ruleSet) sameRules(o ruleSet) bool {
	return r.mode == o.mode && reflect.DeepEqual(r.rules, o.rules)
}

// desiredRules is the rule set that st asks for: the rules of its mode
// (the settings' mode when the state names none).
func desiredRules(st contract.DesiredState) ruleSet {
	return ruleSet{mode: st.ActiveMode(), revision: st.Revision, rules: st.ActiveRules()}
}

// userFor returns the user named token, creating it.
func (m *Monitor) userFor(token string) *user {
	m.mu.Lock()
	defer m.mu.Unlock()
	us, ok := m.users[token]
	if !ok {
		us = &user{token: token}
		m.users[token] = us
	}
	return us
}

// lookup returns the user named token, or nil.
func (m *Monitor) lookup(token string) *user {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.users[token]
}

// accept reports whether st may replace the user's desired state: it must
// not be older than the one held (by UpdatedAt, when both have one).
func (us *user) accept(st contract.DesiredState) bool {
	if !us.known || st.UpdatedAt.IsZero() || us.desired.UpdatedAt.IsZero() {
		return true
	}
	return !st.UpdatedAt.Before(us.desired.UpdatedAt)
}

// SetState records st, a user's desired state from VIGIL_STATE, and
// converges to it when this instance owns the user: gains the user, or
// applies a changed rule set, pause or resume. A state older than the one
// held is ignored.
func (m *Monitor) SetState(ctx context.Context, st contract.DesiredState) error {
	if err := contract.ValidateUserToken(st.User); err != nil {
		return err
	}
	us := m.userFor(st.User)
	us.mu.Lock()
	defer us.mu.Unlock()
	if !us.accept(st) {
		return nil
	}
	us.desired, us.known = st, true
	return m.convergeLocked(ctx, us)
}

// Forget drops user, whose desired state was deleted.
func (m *Monitor) Forget(user string) {
	us := m.lookup(user)
	if us == nil {
		return
	}
	us.mu.Lock()
	m.loseLocked(us, "desired state deleted")
	us.known = false
	us.mu.Unlock()
	m.mu.Lock()
	delete(m.users, user)
	m.mu.Unlock()
}

// Reconcile converges every known user: it gains the owned users that are
// not running yet (with a catch-up unless paused) and lets go of the users
// another instance owns now. Up to reconcileWorkers users converge at
// once, so that the users gained after an owner died do not wait for each
// other's catch-up reads (seconds each while Redis fails over). It returns
// the errors of the users that could not be gained; the next Reconcile
// tries them again.
func (m *Monitor) Reconcile(ctx context.Context) error {
	m.mu.Lock()
	users := slices.Collect(maps.Values(m.users))
	m.mu.Unlock()
	var g errgroup.Group
	g.SetLimit(reconcileWorkers)
	var mu sync.Mutex
	var errs []error
	for _, us := range users {
		g.Go(func() error {
			us.mu.Lock()
			defer us.mu.Unlock()
			if !us.known {
				return nil
			}
			if err := m.convergeLocked(ctx, us); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait() // the workers return nil; their errors are in errs
	return errors.Join(errs...)
}

// reconcileWorkers is how many users Reconcile converges at once.
const reconcileWorkers = 8

// Wants reports whether updates of user are this instance's to evaluate:
// the user is known and owned here. Handle checks again under the user's
// lock; Wants only lets the caller acknowledge the others at once.
func (m *Monitor) Wants(user string) bool {
	us := m.lookup(user)
	return us != nil && m.deps.Ownership.Owns(user)
}

// watches reports whether the user's rules apply to series: the rules
// name no exchange, so they apply to the exchange account of the desired
// state (to any account when the state names none).
func (us *user) watches(series contract.SeriesID) bool {
	return us.desired.ExchangeID == 0 || series.ExchangeID == us.desired.ExchangeID
}

// convergeLocked brings the user to its desired state.
func (m *Monitor) convergeLocked(ctx context.Context, us *user) error {
	if !m.deps.Ownership.Owns(us.token) {
		m.loseLocked(us, "owned by another instance")
		return nil
	}
	if !us.active {
		return m.gainLocked(ctx, us, !us.desired.Paused)
	}
	if want := desiredRules(us.desired); !want.sameRules(us.attempted) {
		if err := m.applyLocked(ctx, us, want); err != nil {
			m.opts.Log.WarnContext(ctx, "desired rules rejected, the running rules stay", "user", us.token,
				"mode", want.mode, "revision", want.revision, "err", err)
		}
	}
	switch {
	case us.desired.Paused && !us.paused:
		m.pauseLocked(ctx, us)
	case !us.desired.Paused && us.paused:
		m.resumeLocked(ctx, us)
	}
	return nil
}

// gainLocked starts the user's engine: the desired rules (none when they
// are invalid), the saved memory, and with catchUp the latest closed bars.
// On error the user stays inactive.
func (m *Monitor) gainLocked(ctx context.Context, us *user, catchUp bool) error {
	want := desiredRules(us.desired)
	engine, rulesErr := rules.NewEngine(want.rules, m.opts.Now)
	applied := want
	if rulesErr != nil {
		m.opts.Log.WarnContext(ctx, "desired rules rejected, running none", "user", us.token,
			"mode", want.mode, "revision", want.revision, "err", rulesErr)
		engine, _ = rules.NewEngine(nil, m.opts.Now)
		applied = ruleSet{mode: want.mode, revision: want.revision}
	}
	snap, ok, err := m.deps.Snapshots.Load(ctx, us.token)
	if err != nil {
		return fmt.Errorf("gain user %s: %w", us.token, err)
	}
	if ok {
		engine.Restore(snap)
	}
	us.engine, us.applied, us.attempted, us.rulesErr = engine, applied, want, rulesErr
	us.saved = snap
	us.active, us.paused = true, us.desired.Paused
	m.opts.Log.InfoContext(ctx, "user gained", "user", us.token, "mode", want.mode, "revision", want.revision,
		"rules", len(applied.rules), "paused", us.paused, "restored", ok)
	if catchUp && !us.paused {
		if err := m.catchUpLocked(ctx, us); err != nil {
			m.loseLocked(us, "catch-up failed")
			return fmt.Errorf("gain user %s: %w", us.token, err)
		}
	}
	m.saveLocked(ctx, us)
	m.publishInfo(us)
	return nil
}

// catchUpLocked evaluates the closed bars of every rule series that may
// still fire, oldest first.
func (m *Monitor) catchUpLocked(ctx context.Context, us *user) error {
	now := m.opts.Now()
	p := &pass{us: us}
	bars := 0
	for _, in := range seriesInputs(us.applied.rules) {
		series := contract.SeriesID{User: us.token, UserID: us.desired.UserID, ExchangeID: us.desired.ExchangeID,
			Symbol: in.symbol, Timeframe: in.tf}
		if err := series.Validate(); err != nil {
			m.opts.Log.WarnContext(ctx, "no catch-up for a series without ids", "user", us.token, "series", series.String(), "err", err)
			continue
		}
		bar := in.tf.Duration()
		from := in.tf.BarStart(now).Add(-catchUpBars * bar).Unix()
		updates, err := m.deps.History.ClosedBars(ctx, series, in.indicators, from)
		if err != nil {
			return err
		}
		for _, u := range updates {
			m.evaluateLocked(ctx, p, Update{IndicatorUpdate: u})
			bars++
		}
	}
	m.commitLocked(ctx, []*pass{p}, func(*pass) {})
	if p.err != nil {
		return p.err
	}
	m.opts.Log.InfoContext(ctx, "caught up", "user", us.token, "bars", bars)
	return nil
}

// seriesInput is one series the rules read and the indicators they need.
type seriesInput struct {
	symbol     string
	tf         contract.Timeframe
	indicators []string
}

// seriesInputs lists the series of rs in a stable order.
func seriesInputs(rs []contract.Rule) []seriesInput {
	var out []seriesInput
	add := func(i int, ref contract.SeriesRef) {
		if !ref.IsPrice() && !slices.Contains(out[i].indicators, ref.Indicator) {
			out[i].indicators = append(out[i].indicators, ref.Indicator)
		}
	}
	for _, r := range rs {
		i := slices.IndexFunc(out, func(s seriesInput) bool { return s.symbol == r.Symbol && s.tf == r.Timeframe })
		if i < 0 {
			out = append(out, seriesInput{symbol: r.Symbol, tf: r.Timeframe})
			i = len(out) - 1
		}
		add(i, r.SeriesRef)
		if r.Other != nil {
			add(i, *r.Other)
		}
	}
	return out
}

// loseLocked stops running the user here.
func (m *Monitor) loseLocked(us *user, why string) {
	if !us.active {
		return
	}
	us.active, us.engine = false, nil
	us.applied, us.attempted, us.rulesErr = ruleSet{}, ruleSet{}, nil
	us.saved = rules.Snapshot{}
	m.opts.Log.Info("user released", "user", us.token, "reason", why)
	m.publishInfo(us)
}

// saveLocked saves the engine memory when it changed since the last load
// or save and this instance still owns the user. A failed save is logged:
// the alerts are durable, and a successor repeats at worst alerts whose
// ids are already recorded.
func (m *Monitor) saveLocked(ctx context.Context, us *user) {
	snap := us.engine.Snapshot()
	if maps.Equal(snap.Rules, us.saved.Rules) || !m.deps.Ownership.Owns(us.token) {
		return
	}
	if err := m.deps.Snapshots.Save(ctx, us.token, snap); err != nil {
		m.opts.Log.WarnContext(ctx, "saving the engine memory failed", "user", us.token, "err", err)
		return
	}
	us.saved = snap
}

// applyLocked installs want; on error the running rules stay.
func (m *Monitor) applyLocked(ctx context.Context, us *user, want ruleSet) error {
	us.attempted = want
	if err := us.engine.Replace(want.rules); err != nil {
		us.rulesErr = err
		m.publishInfo(us)
		return fmt.Errorf("rules of mode %s, revision %d: %w", want.mode, want.revision, err)
	}
	us.applied, us.rulesErr = want, nil
	m.opts.Log.InfoContext(ctx, "rules applied", "user", us.token, "mode", want.mode, "revision", want.revision, "rules", len(want.rules))
	m.saveLocked(ctx, us)
	m.publishInfo(us)
	return nil
}

// pauseLocked stops evaluating the user.
func (m *Monitor) pauseLocked(ctx context.Context, us *user) {
	us.paused = true
	m.opts.Log.InfoContext(ctx, "user paused", "user", us.token)
	m.publishInfo(us)
}

// resumeLocked starts evaluating the user again, on fresh values only.
func (m *Monitor) resumeLocked(ctx context.Context, us *user) {
	us.paused = false
	us.engine.ResetWarm()
	m.saveLocked(ctx, us)
	m.opts.Log.InfoContext(ctx, "user resumed", "user", us.token)
	m.publishInfo(us)
}
