package series

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"vigil.dev/pkg/contract"
)

// Pause stops the user's series on this instance, after the candle updates
// in flight (sent) and the user's rebuilds in flight (stopped): the user's state
// becomes st (or the known state marked paused) and their candles are
// ignored until resume. The indicator state
// of their candle series is kept (see keepsPaused) unless a candle of the
// series arrives while paused, which drops it; order books are dropped.
func (e *Engine) Pause(ctx context.Context, token string, st *contract.DesiredState) (contract.IndicatorsSeriesResult, error) {
	e.mu.Lock() // waits for the candle update in flight
	before, _ := e.countUser(token)
	e.mu.Unlock()
	var err error
	if st != nil {
		paused := *st
		paused.Paused = true
		_, err = e.SetState(ctx, paused)
	} else {
		e.updateState(ctx, token, func(s *contract.DesiredState) { s.Paused = true })
	}
	e.mu.Lock()
	done := e.stopBuilds(func(id contract.SeriesID) bool { return id.User == token })
	computed := e.last()
	e.mu.Unlock()
	err = errors.Join(err, waitBuilds(ctx, done), e.awaitSent(ctx, computed))
	return contract.IndicatorsSeriesResult{OwnerReply: contract.OwnerReply{Owner: before > 0}, Series: before}, err
}

// Resume starts the user's series this instance owns: the user's state
// becomes st (or the known state marked running). A series kept over the
// pause catches up with the candles Redis holds from its last closed bar
// on; the others are rebuilt from Redis. Series already running are kept.
func (e *Engine) Resume(ctx context.Context, token string, st *contract.DesiredState) (contract.IndicatorsSeriesResult, error) {
	var c contract.IndicatorsChange
	var err error
	if st != nil {
		running := *st
		running.Paused = false
		c, err = e.SetState(ctx, running)
	} else {
		c, _ = e.updateState(ctx, token, func(s *contract.DesiredState) { s.Paused = false })
	}
	return contract.IndicatorsSeriesResult{OwnerReply: contract.OwnerReply{Owner: c.Series > 0}, Series: c.Series, Warming: c.Warming}, err
}

// keepsPaused reports whether series s, which does not run, is kept in
// memory because its user is paused: the user is known and paused, the
// series is in their plan with the same indicators, and this instance owns
// it. A kept series stays exact: every candle of it stored in Redis
// meanwhile is either delivered while the user is paused, which drops the
// series (HandleCandles), or after the resume, in stream order like for
// any running series. Resume also reads the bars from the last closed one
// on (catchUp), as fillGap does for a running series. The caller holds
// e.mu.
func (e *Engine) keepsPaused(id contract.SeriesID, s *series) bool {
	return e.keepsPausedFor(e.users[id.User], id, s)
}

// keepsPausedFor is keepsPaused for user u (known or planned).
func (e *Engine) keepsPausedFor(u *user, id contract.SeriesID, s *series) bool {
	return u != nil && u.state.Paused && len(u.plan.Candle) > 0 && u.inPlan(id) && e.owner.Owns(id.String()) &&
		slices.Equal(s.specs, u.plan.Candle)
}

// catchUp resumes the user's kept series that run again: it reads, in one
// Redis pipeline, every series' stored candles from its last closed bar
// on, applies them (every one but the newest as closed, like a rebuild)
// and writes and publishes the updates. A series whose stored candles do
// not fit its state, or whose updates could not be sent, is dropped, for
// Converge or its next candle to rebuild it. The caller holds e.mu.
func (e *Engine) catchUp(ctx context.Context, token string) {
	var kept []*series
	for id, s := range e.series {
		if id.User != token || !s.kept {
			continue
		}
		if _, runs := e.runsSeries(id); runs {
			s.kept = false
			kept = append(kept, s)
		}
	}
	if len(kept) == 0 {
		return
	}
	stored, err := e.storedSince(ctx, kept)
	if err != nil {
		e.log.ErrorContext(ctx, "catching up resumed series failed; rebuilding them", "user", token, "err", err)
		for _, s := range kept {
			delete(e.series, s.id)
		}
		return
	}
	var ups []contract.IndicatorUpdate
	var sent []*series
	for i, s := range kept {
		caught, ok := s.catchUp(stored[i])
		if !ok {
			e.log.InfoContext(ctx, "stored candles do not fit the resumed series; rebuilding it", "series", s.id.String())
			delete(e.series, s.id)
			continue
		}
		if len(caught) > 0 {
			ups = append(ups, caught...)
			sent = append(sent, s)
		}
	}
	if err := e.emit(ctx, ups); err != nil {
		e.log.ErrorContext(ctx, "sending the updates of resumed series failed; their next candle rebuilds them", "user", token, "err", err)
		for _, s := range sent {
			delete(e.series, s.id)
		}
	}
}

// storedSince reads, in one Redis pipeline, the stored candles of each
// series from the start of its last closed bar on (all of them when it
// has none), oldest first.
func (e *Engine) storedSince(ctx context.Context, list []*series) ([][]contract.Candle, error) {
	pipe := e.store.Client().Pipeline()
	cmds := make([]*redis.StringSliceCmd, len(list))
	for i, s := range list {
		var from int64
		if last, ok := s.lastClosed(); ok {
			from = last.start
		}
		cmds[i] = pipe.ZRangeByScore(ctx, contract.CandleKey(s.id), &redis.ZRangeBy{Min: strconv.FormatInt(from, 10), Max: "+inf"})
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read newest candles: %w", err)
	}
	out := make([][]contract.Candle, len(list))
	for i, cmd := range cmds {
		members := cmd.Val()
		out[i] = make([]contract.Candle, len(members))
		for j, m := range members {
			if err := json.Unmarshal([]byte(m), &out[i][j]); err != nil {
				return nil, fmt.Errorf("read %s: candle %d: %w", contract.CandleKey(list[i].id), j, err)
			}
		}
	}
	return out, nil
}

// Apply makes st the user's state: series whose indicator set changed are
// rebuilt from Redis, series of timeframes or symbols no longer in the
// plan dropped, new ones built. Without st it converges to the known
// state.
func (e *Engine) Apply(ctx context.Context, token string, st *contract.DesiredState) (contract.IndicatorsApplyResult, error) {
	var c contract.IndicatorsChange
	var err error
	if st != nil {
		c, err = e.SetState(ctx, *st)
	} else {
		c = e.Converge(ctx, token)
	}
	return contract.IndicatorsApplyResult{OwnerReply: contract.OwnerReply{Owner: c.Series+c.Removed > 0}, IndicatorsChange: c}, err
}

// Recompute rebuilds series id from the candles in Redis, rewrites all its
// values and publishes the newest, if this instance owns it, without
// holding the engine's mutex (rebuildOutside). The series keeps running
// unless its user is paused.
func (e *Engine) Recompute(ctx context.Context, id contract.SeriesID) (contract.IndicatorsRecomputeResult, error) {
	if err := id.Validate(); err != nil {
		return contract.IndicatorsRecomputeResult{}, fmt.Errorf("series: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.owner.Owns(id.String()) {
		return contract.IndicatorsRecomputeResult{}, nil
	}
	u := e.users[id.User]
	if u == nil || len(u.plan.Candle) == 0 || !u.inPlan(id) {
		return contract.IndicatorsRecomputeResult{OwnerReply: contract.OwnerReply{Owner: true}}, nil
	}
	bars, err := e.rebuildOutside(ctx, id, writeAll)
	if err != nil {
		return contract.IndicatorsRecomputeResult{OwnerReply: contract.OwnerReply{Owner: true}}, fmt.Errorf("recompute %s: %w", id, err)
	}
	return contract.IndicatorsRecomputeResult{OwnerReply: contract.OwnerReply{Owner: true}, Bars: bars}, nil
}

// Forget drops the in-memory state of the series matching args (candle
// and order book), stops their rebuilds in flight and waits for them and
// for the candle updates in flight (sent), and,
// for ForgetGrace, rebuilds matching series from
// Redis on each candle, so nothing read before the clear-cache that
// follows is written back after it.
func (e *Engine) Forget(ctx context.Context, args contract.ForgetArgs) (res contract.IndicatorsSeriesResult, err error) {
	sel := args.Selector()
	if err = sel.Validate(); err != nil {
		return contract.IndicatorsSeriesResult{}, err
	}
	e.mu.Lock() // waits for the candle updates being computed
	done := e.stopBuilds(sel.Matches)
	defer func() {
		computed := e.last()
		e.mu.Unlock()
		if werr := errors.Join(waitBuilds(ctx, done), e.awaitSent(ctx, computed)); werr != nil {
			res, err = contract.IndicatorsSeriesResult{}, werr
		}
	}()
	n := 0
	for id := range e.series {
		if sel.Matches(id) {
			delete(e.series, id)
			n++
		}
	}
	for id := range e.books {
		if sel.Matches(id) {
			delete(e.books, id)
			n++
		}
	}
	for id := range e.graceRuns {
		if sel.Matches(id) {
			delete(e.graceRuns, id)
		}
	}
	e.forgotten = append(e.forgotten, forgotten{sel: sel, until: time.Now().Add(ForgetGrace)})
	e.log.InfoContext(ctx, "series forgotten", "user_id", args.UserID, "exchange_id", args.ExchangeID, "scope", args.Scope, "series", n)
	return contract.IndicatorsSeriesResult{OwnerReply: contract.OwnerReply{Owner: n > 0}, Series: n}, nil
}

// Status reports the series this instance runs, per user and in total.
// With a user token it reports only that user.
func (e *Engine) Status(token string) contract.IndicatorsStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := contract.IndicatorsStatus{Instance: e.instance, Name: e.name, Members: e.owner.Members(), Partitions: e.owner.Partitions(), Users: map[string]contract.IndicatorsUserStatus{}}
	for t, u := range e.users {
		if token != "" && t != token {
			continue
		}
		us := contract.IndicatorsUserStatus{Paused: u.state.Paused, Mode: u.mode(), Revision: u.state.Revision}
		us.Series, us.Warming = e.countUser(t)
		if !u.lastCandle.IsZero() {
			last := u.lastCandle.UTC()
			us.LastCandle, us.LagMs = &last, float64(u.lag.Microseconds())/1000
		}
		st.Series += us.Series
		st.Warming += us.Warming
		st.Users[t] = us
	}
	slices.Sort(st.Members)
	return st
}
