// Package series is the state of one vigil-indicators instance: the users'
// desired state, the indicator series of the candle series this instance
// owns, and what happens to them on a candle update, an order-book
// snapshot, an ownership change and each control verb.
//
// Redis is the source of truth: a series this instance gains (at start,
// on failover, recompute, a parameter change, or after forget) is rebuilt
// from the candles stored there, and every value is written there
// (versioned, add-if-newer) before it is published as a
// contract.IndicatorUpdate on JetStream. A paused user's series are kept
// in memory and, on resume, catch up with the newer bars stored meanwhile
// instead of being rebuilt.
//
// All state is guarded by one mutex that a batch of candle updates holds
// while its values are computed; its writes and publishes follow without
// the mutex, in order, while the next batches are computed (pipeline.go,
// at most MaxInFlight batches in flight). A control verb waits for the
// computation in flight and never interleaves with it; the verbs whose
// result promises that nothing more is written for a series (pause,
// forget) and every rebuild also wait until the batches computed before
// them are sent. The heavy work of
// a verb, rebuilding a series from every stored candle (recompute, a
// parameter change, a series gained), runs outside that mutex (see
// build), so one user's long series never delays another user's verbs or
// candles; the candles of a series being built are delivered again once
// it is built.
package series

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/services/indicators/internal/catalog"
)

// Errors of the engine, wrapped with details.
var (
	// ErrConfig reports a missing part of Config.
	ErrConfig = errors.New("engine config")
	// ErrState reports a desired state the engine cannot run.
	ErrState = errors.New("desired state")
	// ErrBuilding reports a candle of a series that is being rebuilt
	// from Redis: deliver it again later (the build may have read it
	// already, then it changes nothing).
	ErrBuilding = errors.New("series is being rebuilt")
)

// InstanceHeader is the NATS header naming the instance that published an
// IndicatorUpdate, for tracing and for checking ownership.
const InstanceHeader = "Vigil-Instance"

// ForgetGrace is how long after forget the matching series are rebuilt
// from Redis on every candle instead of being updated in place: the
// clear-cache that follows forget deletes their keys within it, so state
// read before the deletion is never carried past it.
const ForgetGrace = time.Minute

// Owner tells which keys (series) this instance owns: the indicators
// service's partitioned consumer.
type Owner interface {
	// Owns reports whether this instance owns key.
	Owns(key string) bool
	// Members lists the live instances.
	Members() []string
	// Partitions lists the partitions of VIGIL_CANDLES this instance owns.
	Partitions() []int
	// Fence is this instance's right to write series id: the fence of its
	// partition and the epoch taken when this instance gained it (no
	// epoch when it does not own it).
	Fence(id contract.SeriesID) redisstore.Fence
	// Fenced tells that Redis refused a write to series id under fence f:
	// another instance took its partition, this one stops owning it.
	Fenced(id contract.SeriesID, f redisstore.Fence)
}

// Config is what an Engine needs.
type Config struct {
	Store *redisstore.Store
	JS    jetstream.JetStream
	Owner Owner
	// Instance is this instance's id in the membership (the micro
	// service id); Name its configured name, shown in status.
	Instance string
	Name     string
	Log      *slog.Logger
}

// Engine is one instance's indicator state. Its methods are safe for
// concurrent use.
type Engine struct {
	store    *redisstore.Store
	js       jetstream.JetStream
	owner    Owner
	instance string
	name     string
	log      *slog.Logger
	metrics  metrics

	mu        sync.Mutex
	users     map[string]*user
	series    map[contract.SeriesID]*series
	books     map[contract.SeriesID]*book
	forgotten []forgotten
	// graceRuns are the series rebuilt for a candle within a forget's
	// grace: they run (each candle rebuilds them from Redis) though none
	// is kept in series.
	graceRuns map[contract.SeriesID]bool
	// builds are the series being rebuilt outside mu.
	builds map[contract.SeriesID]*build
	// rewrite are the series whose last write failed: their next rebuild
	// writes every bar (writeAll), not only those from the newest stored
	// point on, since a failed pipeline may have written some of its
	// later commands (Redis refuses commands one by one).
	rewrite map[contract.SeriesID]bool

	// pipe orders the batches of candle updates being sent.
	pipe pipeline

	// bg ends the builds candles started in the background (Close);
	// background counts them.
	bg         context.Context
	stopBg     context.CancelFunc
	background sync.WaitGroup
}

// user is one user's desired state as this instance knows it.
type user struct {
	state contract.DesiredState
	plan  catalog.Plan
	// lastCandle is when this instance last processed a candle of the
	// user; lag how long after the candle's observation that was.
	lastCandle time.Time
	lag        time.Duration
}

// forgotten is a forget's selector and when its grace ends.
type forgotten struct {
	sel   contract.CacheSelector
	until time.Time
}

// New returns an engine without users; SetState adds them.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil || cfg.JS == nil || cfg.Owner == nil || cfg.Log == nil || cfg.Instance == "" {
		return nil, fmt.Errorf("%w: store, jetstream, owner, log and instance are required", ErrConfig)
	}
	m, err := newMetrics()
	if err != nil {
		return nil, err
	}
	bg, stopBg := context.WithCancel(context.Background())
	return &Engine{store: cfg.Store, js: cfg.JS, owner: cfg.Owner, instance: cfg.Instance, name: cfg.Name, log: cfg.Log, metrics: m,
		users: map[string]*user{}, series: map[contract.SeriesID]*series{}, books: map[contract.SeriesID]*book{},
		builds: map[contract.SeriesID]*build{}, rewrite: map[contract.SeriesID]bool{}, graceRuns: map[contract.SeriesID]bool{}, pipe: newPipeline(), bg: bg, stopBg: stopBg}, nil
}

// Close stops the rebuilds that candles started in the background and
// waits for them to end, at most until ctx ends; their candles are
// delivered again (to this or another instance).
func (e *Engine) Close(ctx context.Context) error {
	e.stopBg()
	done := make(chan struct{})
	go func() { e.background.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("background rebuilds did not end: %w", ctx.Err())
	}
}

// mode is the user's mode (the settings' when the state has none).
func (u *user) mode() contract.Mode {
	if u.state.Mode != "" {
		return u.state.Mode
	}
	return u.state.Settings.Mode
}

// symbols are the user's symbols (the settings' when the state has none).
func (u *user) symbols() []string {
	if u.state.Symbols != nil {
		return u.state.Symbols
	}
	return u.state.Settings.Symbols
}

// inPlan reports whether id is one of the user's series: their account,
// one of their symbols and a timeframe of their mode.
func (u *user) inPlan(id contract.SeriesID) bool {
	return id.User == u.state.User && id.UserID == u.state.UserID && id.ExchangeID == u.state.ExchangeID &&
		slices.Contains(u.symbols(), id.Symbol) && slices.Contains(u.mode().Timeframes(), id.Timeframe)
}

// seriesIDs are every series of the user's plan.
func (u *user) seriesIDs() []contract.SeriesID {
	var ids []contract.SeriesID
	for _, sym := range u.symbols() {
		for _, tf := range u.mode().Timeframes() {
			ids = append(ids, contract.SeriesID{User: u.state.User, UserID: u.state.UserID, ExchangeID: u.state.ExchangeID, Symbol: sym, Timeframe: tf})
		}
	}
	return ids
}

// runsSeries reports whether this instance should keep candle series id
// now: its user runs, it is in their plan, the plan has candle indicators
// and this instance owns it.
func (e *Engine) runsSeries(id contract.SeriesID) (*user, bool) {
	u := e.users[id.User]
	return u, e.runsFor(u, id)
}

// runsFor is runsSeries for user u (known or planned).
func (e *Engine) runsFor(u *user, id contract.SeriesID) bool {
	return u != nil && !u.state.Paused && len(u.plan.Candle) > 0 && u.inPlan(id) && e.owner.Owns(id.String())
}

// runsBook is runsSeries for the order-book indicators of series id.
func (e *Engine) runsBook(id contract.SeriesID) (*user, bool) {
	u := e.users[id.User]
	return u, e.runsBookFor(u, id)
}

// runsBookFor is runsBook for user u (known or planned).
func (e *Engine) runsBookFor(u *user, id contract.SeriesID) bool {
	return u != nil && !u.state.Paused && u.plan.Book != nil && u.inPlan(id) && e.owner.Owns(id.String())
}

// wantsBuild reports whether build b of series id is still of use: the
// user is known, the series is in their plan with the indicators b builds
// and this instance owns it. A paused user's builds go on (a recompute
// while paused); Pause stops them. The caller holds e.mu.
func (e *Engine) wantsBuild(id contract.SeriesID, b *build) bool {
	u := e.users[id.User]
	return u != nil && u.inPlan(id) && slices.Equal(b.specs, u.plan.Candle) && e.owner.Owns(id.String())
}

// isForgotten reports whether id is within the grace of a forget, and
// drops expired forgets.
func (e *Engine) isForgotten(id contract.SeriesID) bool {
	now := time.Now()
	e.forgotten = slices.DeleteFunc(e.forgotten, func(f forgotten) bool { return now.After(f.until) })
	return slices.ContainsFunc(e.forgotten, func(f forgotten) bool { return f.sel.Matches(id) })
}

// SetState makes st the user's desired state and converges this
// instance's series of the user to it. A state older (by UpdatedAt) than
// the one known is ignored.
func (e *Engine) SetState(ctx context.Context, st contract.DesiredState) (contract.IndicatorsChange, error) {
	if err := st.Validate(); err != nil {
		return contract.IndicatorsChange{}, fmt.Errorf("%w of %q: %w", ErrState, st.User, err)
	}
	e.mu.Lock()
	if cur := e.users[st.User]; cur != nil && st.UpdatedAt.Before(cur.state.UpdatedAt) {
		e.mu.Unlock()
		return e.Converge(ctx, st.User), nil
	}
	u, err := newUser(st)
	if err != nil {
		e.log.WarnContext(ctx, "indicators left out of the plan", "user", st.User, "err", err)
	}
	if cur := e.users[st.User]; cur != nil {
		u.lastCandle, u.lag = cur.lastCandle, cur.lag
	}
	e.users[st.User] = u
	e.mu.Unlock()
	return e.Converge(ctx, st.User), nil
}

// newUser is the user of state st with its indicator plan; an error
// names the indicators left out of the plan (the user is still usable).
func newUser(st contract.DesiredState) (*user, error) {
	u := &user{state: st}
	var err error
	u.plan, err = catalog.For(u.mode(), st.Settings.Indicators.WithDefaults())
	return u, err
}

// updateState changes the known state of a user with f and converges;
// false when the user is unknown.
func (e *Engine) updateState(ctx context.Context, token string, f func(*contract.DesiredState)) (contract.IndicatorsChange, bool) {
	e.mu.Lock()
	u := e.users[token]
	if u != nil {
		f(&u.state)
	}
	e.mu.Unlock()
	if u == nil {
		return contract.IndicatorsChange{}, false
	}
	return e.Converge(ctx, token), true
}

// RemoveUser drops a user whose desired state was deleted.
func (e *Engine) RemoveUser(ctx context.Context, token string) {
	e.mu.Lock()
	delete(e.users, token)
	done := e.stopBuilds(func(id contract.SeriesID) bool { return id.User == token })
	e.mu.Unlock()
	if err := waitBuilds(ctx, done); err != nil {
		e.log.WarnContext(ctx, "removing a user", "user", token, "err", err)
	}
	e.Converge(ctx, token)
}

// ConvergeAll converges every user, after the live instances changed.
func (e *Engine) ConvergeAll(ctx context.Context) {
	e.mu.Lock()
	tokens := make([]string, 0, len(e.users))
	for token := range e.users {
		tokens = append(tokens, token)
	}
	e.dropUnowned(ctx, "")
	e.mu.Unlock()
	for _, token := range tokens {
		e.Converge(ctx, token)
	}
}

// dropUnowned drops the series (of user token, or of everyone when token
// is empty) that this instance should not run any more. It returns how
// many it dropped for good and the ids of those dropped because their
// indicator set changed (to be rebuilt). The caller holds e.mu.
func (e *Engine) dropUnowned(ctx context.Context, token string) (removed int, replanned map[contract.SeriesID]bool) {
	replanned = map[contract.SeriesID]bool{}
	for id, s := range e.series {
		if token != "" && id.User != token {
			continue
		}
		switch e.fateOf(e.users[id.User], id, s) {
		case fateKeepPaused:
			s.kept = true
		case fateDrop:
			delete(e.series, id)
			removed++
		case fateReplan:
			delete(e.series, id)
			replanned[id] = true
		}
	}
	for id := range e.books {
		if token != "" && id.User != token {
			continue
		}
		if !e.runsBookFor(e.users[id.User], id) {
			delete(e.books, id)
			removed++
		}
	}
	for id, b := range e.builds {
		if token != "" && id.User != token {
			continue
		}
		if !e.wantsBuild(id, b) {
			b.stop()
		}
	}
	if removed+len(replanned) > 0 {
		e.log.DebugContext(ctx, "series dropped", "user", token, "dropped", removed, "replanned", len(replanned))
	}
	return removed, replanned
}

// fate is what converging does to one in-memory candle series.
type fate int

// The fates of a series.
const (
	// fateKeep: it runs on as it is.
	fateKeep fate = iota
	// fateKeepPaused: it stops but is kept for the resume (keepsPaused).
	fateKeepPaused
	// fateDrop: it is dropped for good.
	fateDrop
	// fateReplan: its indicator set changed; it is rebuilt (recomputed).
	fateReplan
)

// fateOf is the fate of series s under user u (the known user, or the
// one a plan would make). The caller holds e.mu.
func (e *Engine) fateOf(u *user, id contract.SeriesID, s *series) fate {
	switch {
	case !e.runsFor(u, id) && e.keepsPausedFor(u, id, s):
		return fateKeepPaused
	case !e.runsFor(u, id):
		return fateDrop
	case !slices.Equal(s.specs, u.plan.Candle):
		return fateReplan
	}
	return fateKeep
}

// Converge makes this instance run exactly the user's series it should:
// it drops the others, catches up the series it kept over a pause with
// the newer candles in Redis, and rebuilds the missing ones from Redis
// (except those within a forget's grace, which rebuild on their next
// candle), each without holding e.mu (rebuildOutside) and after a
// rebuild of it in flight.
func (e *Engine) Converge(ctx context.Context, token string) contract.IndicatorsChange {
	var c contract.IndicatorsChange
	e.mu.Lock()
	removed, replanned := e.dropUnowned(ctx, token)
	c.Removed = removed
	e.catchUp(ctx, token)
	var missing []contract.SeriesID
	if u := e.users[token]; u != nil {
		for _, id := range u.seriesIDs() {
			if _, runs := e.runsSeries(id); runs && e.series[id] == nil && !e.isForgotten(id) {
				missing = append(missing, id)
			}
		}
	}
	e.mu.Unlock()
	for _, id := range missing {
		e.mu.Lock()
		if err := e.awaitBuild(ctx, id); err != nil {
			e.mu.Unlock()
			break
		}
		if _, runs := e.runsSeries(id); runs && e.series[id] == nil && !e.isForgotten(id) {
			switch _, err := e.rebuildOutside(ctx, id, writeNew); {
			case errors.Is(err, errBuildStopped):
				// A later change stopped it and converges the series.
			case err != nil:
				e.log.ErrorContext(ctx, "rebuild failed; the next candle retries", "series", id.String(), "err", err)
			case replanned[id]:
				c.Recomputed++
			default:
				c.Added++
			}
		}
		e.mu.Unlock()
	}
	e.mu.Lock()
	c.Series, c.Warming = e.countUser(token)
	e.mu.Unlock()
	return c
}

// countUser counts the user's running series (those being rebuilt and
// those a candle rebuilt within a forget's grace included) and the
// warming ones (a paused user's kept series do not run). The
// caller holds e.mu.
func (e *Engine) countUser(token string) (running, warming int) {
	for id, s := range e.series {
		if id.User == token && !s.kept {
			running++
			if s.warming > 0 {
				warming++
			}
		}
	}
	for id := range e.books {
		if id.User == token {
			running++
		}
	}
	for id := range e.builds {
		if id.User == token {
			running++
		}
	}
	for id := range e.graceRuns {
		switch {
		case !e.isForgotten(id):
			delete(e.graceRuns, id)
		case id.User == token && e.series[id] == nil && e.builds[id] == nil:
			if _, runs := e.runsSeries(id); runs {
				running++
			}
		}
	}
	return running, warming
}

// ResetAll drops every series and order book and rebuilds the series this
// instance runs from Redis, after this instance may have missed candles
// (a lost consumer, a reconnect).
func (e *Engine) ResetAll(ctx context.Context) {
	e.mu.Lock()
	clear(e.series)
	clear(e.books)
	e.mu.Unlock()
	e.ConvergeAll(ctx)
}
