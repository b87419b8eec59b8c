package monitor

// This file: batches of updates evaluated per user and their alerts
// recorded once (the package doc's "Exactly one alert per event").

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/alerts/internal/record"
	"vigil.dev/services/alerts/internal/rules"
)

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
