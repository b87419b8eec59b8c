// Package monitor runs the rule engines of the users that an instance of
// vigil-alerts owns, and delivers their alerts exactly once per event.
//
// # Users and ownership
//
// A user is known once their desired state (contract.DesiredState, from KV
// VIGIL_STATE or a control verb) has been seen; updates of unknown users are
// ignored. Of the known users the instance evaluates those it owns
// (Ownership, by user token). Gaining a user builds an engine for the rules
// of the desired mode, restores the engine memory the previous owner saved
// (Snapshots) and, unless the user is paused, catches up: it evaluates the
// latest closed bars of every rule series from the stored indicator values
// (History), so that an event published while no instance evaluated the
// user fires now. Losing a user drops the engine; its memory lives on in
// Snapshots.
//
// # Exactly one alert per event
//
// The engine fires at most once per rule and bar and names each alert
// deterministically, so an event evaluated twice (redelivery, two owners
// during a handover, a catch-up over bars evaluated before) yields the same
// alert id, which the Recorder stores once. Handle takes a batch of
// updates: it evaluates them in order per user, records every alert of the
// batch in one go (retrying until it succeeds, ctx ends or the user moves
// to another instance), then saves each touched user's engine memory once,
// when it changed; only then may the updates be acknowledged. When
// recording fails for good for a user, that user's engine memory is rolled
// back to before the batch, so a redelivery fires again. A new alert (the
// first record of its id) is counted; webhooks are sent from the stream.
//
// # Pause, resume, apply
//
// A paused user is not evaluated. Resuming forgets the remembered values
// (rules.Engine.ResetWarm), so rules fire only on transitions between bars
// seen after the resume. Applying installs the rules of the desired mode
// with rules.Engine.Replace; invalid rules are rejected as a whole and the
// running rules stay. The desired state converges the same way: a paused
// flag or rule set that differs from the running one is applied.
package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/alerts/internal/metrics"
	"vigil.dev/services/alerts/internal/record"
	"vigil.dev/services/alerts/internal/rules"
)

// Recorder makes a batch of alerts durable; fresh[i] is true when alerts[i]
// was recorded now, false when its id was recorded before. On error the
// batch must be recorded again, which must be safe; fresh, when not nil,
// still tells which alerts that attempt recorded.
type Recorder interface {
	Record(ctx context.Context, alerts []record.Alert) (fresh []bool, err error)
}

// Update is an indicator update to evaluate and the trace it arrived with.
type Update struct {
	contract.IndicatorUpdate
	// Trace is the span context of the update's producer; the alerts the
	// update fires continue it.
	Trace trace.SpanContext
}

// Snapshots keeps users' engine memory across instances.
type Snapshots interface {
	Load(ctx context.Context, user string) (snap rules.Snapshot, ok bool, err error)
	Save(ctx context.Context, user string, snap rules.Snapshot) error
}

// History rebuilds the updates of a series' closed bars starting at or
// after from, oldest first, with the named indicators.
type History interface {
	ClosedBars(ctx context.Context, series contract.SeriesID, indicators []string, from int64) ([]contract.IndicatorUpdate, error)
}

// Ownership tells whether this instance owns a user token.
type Ownership interface {
	Owns(key string) bool
}

// Deps are the monitor's ports; all are required.
type Deps struct {
	Recorder  Recorder
	Snapshots Snapshots
	History   History
	Ownership Ownership
}

// Options tune a monitor. Zero values take the defaults in brackets.
type Options struct {
	// Now is the clock of the engines [time.Now].
	Now func() time.Time
	// Log receives the monitor's events [slog.Default()].
	Log *slog.Logger
	// Metrics counts evaluations and alerts [the global meter provider].
	Metrics *metrics.Metrics
	// RetryBackoff is the first wait before recording an alert again
	// [100ms]; it doubles with jitter up to MaxRetryBackoff [5s].
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// MaxAlertsPerMinute bounds the alerts a user fires in a minute of
	// Now's clock; the ones beyond are suppressed: not recorded, counted
	// (Metrics.Suppressed, status alerts_suppressed) and logged once per
	// user and minute. 0 is no limit.
	MaxAlertsPerMinute int
}

// AlertsPerMinuteLimit names the per-user alert rate limit in logs and
// metrics; VIGIL_ALERTS_PER_MINUTE sets it.
const AlertsPerMinuteLimit = "alerts_per_minute"

// Errors of the monitor.
var (
	// ErrInvalidDeps reports a missing dependency or bad option.
	ErrInvalidDeps = errors.New("monitor: invalid dependencies")
	// ErrNotOwner reports work stopped because the user moved to another
	// instance.
	ErrNotOwner = errors.New("monitor: user is owned by another instance")
)

// catchUpBars is how many closed bars before the current one a catch-up
// evaluates: a closed bar stays fresh for two bars after its end (see
// package rules), so these are all the bars that can still fire.
const catchUpBars = 3

// Monitor runs the engines of the owned users. It is safe for concurrent
// use; the work on one user is serialised.
type Monitor struct {
	deps Deps
	opts Options

	mu    sync.Mutex
	users map[string]*user
}

// New checks deps and opts and returns a monitor without users.
func New(deps Deps, opts Options) (*Monitor, error) {
	if deps.Recorder == nil || deps.Snapshots == nil || deps.History == nil || deps.Ownership == nil {
		return nil, fmt.Errorf("%w: recorder, snapshots, history and ownership are required", ErrInvalidDeps)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Metrics == nil {
		m, err := metrics.New(nil)
		if err != nil {
			return nil, fmt.Errorf("%w: metrics: %w", ErrInvalidDeps, err)
		}
		opts.Metrics = m
	}
	if opts.RetryBackoff == 0 {
		opts.RetryBackoff = 100 * time.Millisecond
	}
	if opts.MaxRetryBackoff == 0 {
		opts.MaxRetryBackoff = 5 * time.Second
	}
	if opts.RetryBackoff < 0 || opts.MaxRetryBackoff < opts.RetryBackoff {
		return nil, fmt.Errorf("%w: retry backoff %s..%s must be positive and increasing", ErrInvalidDeps, opts.RetryBackoff, opts.MaxRetryBackoff)
	}
	return &Monitor{deps: deps, opts: opts, users: map[string]*user{}}, nil
}

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
	info        atomic.Pointer[UserStatus]
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
// another instance owns now. It returns the errors of the users that could
// not be gained; the next Reconcile tries them again.
func (m *Monitor) Reconcile(ctx context.Context) error {
	m.mu.Lock()
	users := slices.Collect(maps.Values(m.users))
	m.mu.Unlock()
	var errs []error
	for _, us := range users {
		us.mu.Lock()
		if us.known {
			errs = append(errs, m.convergeLocked(ctx, us))
		}
		us.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Wants reports whether updates of user are this instance's to evaluate:
// the user is known and owned here. Handle checks again under the user's
// lock; Wants only lets the caller acknowledge the others at once.
func (m *Monitor) Wants(user string) bool {
	us := m.lookup(user)
	return us != nil && m.deps.Ownership.Owns(user)
}

// Handle evaluates updates, in order per user, for the users this
// instance owns that are not paused, each update only when it is a series
// of the desired state's exchange account; it records the alerts of the
// whole batch together and saves each touched user's engine memory once.
// It returns nil when every update may be acknowledged. Otherwise errs
// has one entry per update: an update with an error must be delivered
// again (its user's engine memory is as if none of the user's updates in
// the batch had been seen), one without may be acknowledged.
func (m *Monitor) Handle(ctx context.Context, updates ...Update) (errs []error) {
	passes := m.lockUsers(updates)
	for _, p := range passes {
		m.evaluatePass(ctx, p, updates)
	}
	// A user that fired nothing is unlocked as soon as its memory is saved,
	// so that verbs and desired states for it do not wait for the others'
	// alerts to be recorded.
	m.commitLocked(ctx, passes, func(p *pass) { p.us.mu.Unlock() })
	for _, p := range passes {
		if p.err == nil {
			continue
		}
		if errs == nil {
			errs = make([]error, len(updates))
		}
		for _, i := range p.updates {
			errs[i] = p.err
		}
	}
	return errs
}

// pass is the work of one Handle or catch-up on one user.
type pass struct {
	us *user
	// updates are the indices of the user's updates in Handle's batch, in
	// order.
	updates []int
	// evaluated is set once the engine has seen an update; before is its
	// memory until then.
	evaluated bool
	before    rules.Snapshot
	// alerts are the alerts fired, in order.
	alerts []record.Alert
	// err, when set, means the user's updates must be delivered again.
	err error
}

// lockUsers groups updates by known user and locks those users, in the
// order of their tokens so that two batches never wait for each other.
func (m *Monitor) lockUsers(updates []Update) []*pass {
	byUser := map[string]*pass{}
	var passes []*pass
	for i, u := range updates {
		p, ok := byUser[u.User]
		if !ok {
			us := m.lookup(u.User)
			if us == nil {
				continue
			}
			p = &pass{us: us}
			byUser[u.User] = p
			passes = append(passes, p)
		}
		p.updates = append(p.updates, i)
	}
	slices.SortFunc(passes, func(a, b *pass) int { return strings.Compare(a.us.token, b.us.token) })
	for _, p := range passes {
		p.us.mu.Lock()
	}
	return passes
}

// evaluatePass evaluates the user's updates of the batch unless the user
// is unknown, owned elsewhere or paused; it gains an owned user first.
func (m *Monitor) evaluatePass(ctx context.Context, p *pass, updates []Update) {
	us := p.us
	if !us.known {
		return
	}
	if !m.deps.Ownership.Owns(us.token) {
		m.loseLocked(us, "owned by another instance")
		return
	}
	if !us.active {
		if err := m.gainLocked(ctx, us, !us.desired.Paused); err != nil {
			p.err = err
			return
		}
	}
	if us.paused {
		return
	}
	for _, i := range p.updates {
		if us.watches(updates[i].SeriesID) {
			m.evaluateLocked(ctx, p, updates[i])
		}
	}
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

// evaluateLocked evaluates u on the pass's user, keeping the engine
// memory from before the pass's first evaluation and the alerts fired.
func (m *Monitor) evaluateLocked(ctx context.Context, p *pass, u Update) {
	us := p.us
	if !p.evaluated {
		p.before, p.evaluated = us.engine.Snapshot(), true
	}
	for _, a := range us.engine.Evaluate(u.IndicatorUpdate) {
		if m.admitLocked(ctx, us, a) {
			p.alerts = append(p.alerts, record.Alert{Alert: a, Trace: u.Trace})
		}
	}
	us.evaluations.Add(1)
	us.lastEval.Store(m.opts.Now().UnixNano())
	if u.Start > us.lastBar.Load() {
		us.lastBar.Store(u.Start)
	}
	m.opts.Metrics.Evaluations.Add(ctx, 1)
}

// admitLocked counts a against the user's alerts of this minute and
// reports whether it is within MaxAlertsPerMinute; one beyond is counted
// as suppressed, and the first of a minute is logged.
func (m *Monitor) admitLocked(ctx context.Context, us *user, a contract.Alert) bool {
	limit := m.opts.MaxAlertsPerMinute
	if limit <= 0 {
		return true
	}
	if minute := m.opts.Now().Unix() / 60; minute != us.alertMinute {
		us.alertMinute, us.alertsInMinute = minute, 0
	}
	us.alertsInMinute++
	if us.alertsInMinute <= limit {
		return true
	}
	us.suppressed.Add(1)
	m.opts.Metrics.Suppressed.Add(ctx, 1, metric.WithAttributes(attribute.String("limit", AlertsPerMinuteLimit)))
	if us.alertsInMinute == limit+1 {
		m.opts.Log.WarnContext(ctx, "alerts suppressed: "+AlertsPerMinuteLimit+" limit reached for this minute (VIGIL_ALERTS_PER_MINUTE)",
			"user", us.token, "limit", limit, "first_suppressed", a.ID)
	}
	return false
}

// commitLocked records the alerts of every pass together, retrying until
// it succeeds, ctx ends or a pass's user moves away (that pass fails, the
// others are retried), and counts the new ones. It saves
// the engine memory of each pass that succeeded, concurrently (those that
// fired nothing while the alerts are recorded), and rolls back the memory
// of each that failed. Once a pass is done, and before commitLocked
// returns, release is called with it exactly once.
func (m *Monitor) commitLocked(ctx context.Context, passes []*pass, release func(*pass)) {
	var saves sync.WaitGroup
	save := func(p *pass) {
		saves.Go(func() {
			m.saveLocked(ctx, p.us)
			release(p)
		})
	}
	var pending []*pass
	for _, p := range passes {
		switch {
		case p.err != nil || !p.evaluated:
			release(p)
		case len(p.alerts) > 0:
			pending = append(pending, p)
		default:
			save(p)
		}
	}
	if len(pending) > 0 {
		m.recordLocked(ctx, pending)
	}
	for _, p := range pending {
		if p.err != nil {
			p.us.engine.Restore(p.before)
			release(p)
			continue
		}
		save(p)
	}
	saves.Wait()
}

// recordLocked records the alerts of pending, whose errors it sets on
// failure, and counts the new alerts.
func (m *Monitor) recordLocked(ctx context.Context, pending []*pass) {
	pending = slices.Clone(pending) // the retries drop the passes of users that moved away
	exp := backoff.NewExponentialBackOff()
	exp.InitialInterval, exp.MaxInterval = m.opts.RetryBackoff, m.opts.MaxRetryBackoff
	var alerts []record.Alert
	// recorded are the ids some attempt recorded for the first time: a
	// retry finds them recorded before, yet they are new.
	recorded := map[string]bool{}
	attempt := func() (struct{}, error) {
		alerts = alerts[:0]
		for _, p := range pending {
			alerts = append(alerts, p.alerts...)
		}
		fresh, err := m.deps.Recorder.Record(ctx, alerts)
		for i, f := range fresh {
			if f {
				recorded[alerts[i].ID] = true
			}
		}
		if err == nil {
			return struct{}{}, nil
		}
		m.opts.Metrics.DeliveryErrors.Add(ctx, 1)
		pending = slices.DeleteFunc(pending, func(p *pass) bool {
			if m.deps.Ownership.Owns(p.us.token) {
				return false
			}
			p.err = fmt.Errorf("record %d alerts of user %s: %w: %w", len(p.alerts), p.us.token, ErrNotOwner, err)
			return true
		})
		if len(pending) == 0 {
			return struct{}{}, backoff.Permanent(err)
		}
		return struct{}{}, err
	}
	notify := func(err error, wait time.Duration) {
		m.opts.Log.WarnContext(ctx, "recording alerts failed, retrying", "alerts", len(alerts), "first", alerts[0].ID, "wait", wait, "err", err)
	}
	_, err := backoff.Retry(ctx, attempt, backoff.WithBackOff(exp), backoff.WithMaxElapsedTime(0), backoff.WithNotify(notify))
	if err != nil {
		for _, p := range pending {
			p.err = fmt.Errorf("record %d alerts of user %s: %w", len(p.alerts), p.us.token, err)
		}
		return
	}
	for _, p := range pending {
		for _, a := range p.alerts {
			m.firedLocked(ctx, p.us, a.Alert, recorded[a.ID])
			delete(recorded, a.ID) // a repeat later in the batch is not new
		}
	}
}

// firedLocked counts and logs a recorded alert when it is new. Webhooks
// are sent from the stream (package webhook), not from here.
func (m *Monitor) firedLocked(ctx context.Context, us *user, a contract.Alert, fresh bool) {
	if !fresh {
		m.opts.Log.DebugContext(ctx, "alert recorded before", "user", us.token, "alert", a.ID)
		return
	}
	us.fired.Add(1)
	m.opts.Metrics.Fired.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", string(a.Kind))))
	m.opts.Log.InfoContext(ctx, "alert fired", "user", us.token, "alert", a.ID, "rule", a.RuleID, "message", a.Message)
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
