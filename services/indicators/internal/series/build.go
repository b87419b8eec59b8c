package series

// This file: rebuilds of a series from the candles in Redis, run outside
// the engine's mutex.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/services/indicators/internal/ta"
)

// rebuildWrites says which rebuilt values are written to Redis.
type rebuildWrites int

const (
	// writeNew writes each indicator's bars from its newest stored point
	// on: what a previous owner left unwritten, without rewriting history.
	writeNew rebuildWrites = iota
	// writeAll writes every bar (recompute after the candles changed).
	writeAll
)

// build is a rebuild of one series from Redis running outside e.mu: the
// series' candles are delivered again until it ends.
type build struct {
	// specs are the indicators it builds.
	specs []ta.Spec
	// stop cancels the build; done is closed when it ended.
	stop context.CancelFunc
	done chan struct{}
	// after is the last batch of candles computed when it began: it
	// reads Redis once that batch's updates (of the series among them)
	// are sent.
	after uint64
	// rewrite: the series' last write failed, write every bar.
	rewrite bool
}

// errBuildStopped reports a build that was stopped or whose series
// changed meanwhile (paused, forgotten, replanned, moved).
var errBuildStopped = &contract.Error{Code: contract.CodeConflict, Message: "the series changed while it was rebuilt (paused, cleared, replanned or moved)"}

// rebuildOutside is rebuild without holding e.mu while it reads, computes,
// writes and publishes: other users' verbs and candles go on meanwhile.
// It waits first for a build of the series in flight. A build that
// stopBuilds stopped returns errBuildStopped. Otherwise the rebuilt series
// is kept when it still runs with the same indicators (or is kept over
// its user's pause) and is not within a forget's grace, as if the change
// had come after the rebuild. The caller holds e.mu, which is held again
// on return; the engine may have changed meanwhile.
func (e *Engine) rebuildOutside(ctx context.Context, id contract.SeriesID, writes rebuildWrites) (int, error) {
	if err := e.awaitBuild(ctx, id); err != nil {
		return 0, err
	}
	b, bctx, err := e.beginBuild(ctx, id)
	if err != nil {
		return 0, err
	}
	e.mu.Unlock()
	return e.finishBuild(ctx, bctx, id, b, writes)
}

// beginBuild registers a build of series id with its user's indicators
// and drops the series meanwhile; bctx is the build's context, which
// stopBuilds cancels. The caller holds e.mu and no build of id is in
// flight.
func (e *Engine) beginBuild(ctx context.Context, id contract.SeriesID) (b *build, bctx context.Context, err error) {
	u := e.users[id.User]
	if u == nil || len(u.plan.Candle) == 0 {
		return nil, nil, errBuildStopped
	}
	delete(e.series, id)
	bctx, stop := context.WithCancel(ctx)
	b = &build{specs: u.plan.Candle, stop: stop, done: make(chan struct{}), after: e.last(), rewrite: e.rewrite[id]}
	e.builds[id] = b
	return b, bctx, nil
}

// finishBuild runs build b of series id (beginBuild) without holding e.mu,
// once the candle updates computed before it began are sent, then takes
// e.mu, ends the build and installs the series as rebuildOutside says. It
// returns holding e.mu.
func (e *Engine) finishBuild(ctx, bctx context.Context, id contract.SeriesID, b *build, writes rebuildWrites) (int, error) {
	var fences map[contract.SeriesID]redisstore.Fence
	var writeErr error
	var s *series
	var bars int
	if b.rewrite {
		writes = writeAll
	}
	err := e.awaitSent(bctx, b.after)
	if err == nil {
		s, bars, err = e.buildSeries(bctx, id, b.specs, writes, func(ctx context.Context, ups []contract.IndicatorUpdate) error {
			fences, writeErr = e.writeFenced(ctx, ups)
			return writeErr
		})
	}
	e.mu.Lock()
	e.dropFenced(ctx, fences, writeErr)
	stopped := bctx.Err() != nil && ctx.Err() == nil
	b.stop()
	delete(e.builds, id)
	close(b.done)
	if stopped || err != nil {
		e.rewrite[id] = true
	} else {
		delete(e.rewrite, id)
	}
	switch {
	case stopped:
		return 0, errBuildStopped
	case err != nil:
		return 0, err
	}
	u := e.users[id.User]
	_, runs := e.runsSeries(id)
	switch {
	case u == nil || !slices.Equal(b.specs, u.plan.Candle):
	case e.isForgotten(id):
		if runs {
			e.graceRuns[id] = true
		}
	case runs:
		e.series[id] = s
	case e.keepsPaused(id, s):
		s.kept = true
		e.series[id] = s
	}
	return bars, nil
}

// awaitBuild waits, without holding e.mu, until no build of series id is
// in flight. The caller holds e.mu, which is held again on return.
func (e *Engine) awaitBuild(ctx context.Context, id contract.SeriesID) error {
	for b := e.builds[id]; b != nil; b = e.builds[id] {
		e.mu.Unlock()
		select {
		case <-b.done:
		case <-ctx.Done():
		}
		e.mu.Lock()
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// stopBuilds stops the builds of the series matching match and returns
// what to wait on for them to end (waitBuilds, without e.mu): nothing of
// theirs is written after that. The caller holds e.mu.
func (e *Engine) stopBuilds(match func(contract.SeriesID) bool) []chan struct{} {
	var done []chan struct{}
	for id, b := range e.builds {
		if match(id) {
			b.stop()
			done = append(done, b.done)
		}
	}
	return done
}

// waitBuilds waits until the builds stopBuilds stopped ended, or ctx
// ends.
func waitBuilds(ctx context.Context, done []chan struct{}) error {
	for _, d := range done {
		select {
		case <-d:
		case <-ctx.Done():
			return fmt.Errorf("stopped rebuilds did not end: %w", ctx.Err())
		}
	}
	return nil
}

// buildSeries builds series id with indicators specs from the candles in
// Redis, writes its values with write (e.write, or writeFenced without
// e.mu), publishes the newest bar's update and returns it with the number
// of bars. It touches no engine state but through write, so it runs with
// or without e.mu; ctx stops it between steps.
func (e *Engine) buildSeries(ctx context.Context, id contract.SeriesID, specs []ta.Spec, writes rebuildWrites,
	write func(context.Context, []contract.IndicatorUpdate) error) (*series, int, error) {
	s, err := newSeries(id, specs)
	if err != nil {
		return nil, 0, err
	}
	candles, err := e.store.Candles(ctx, id, 0, 0)
	if err != nil {
		return nil, 0, err
	}
	began := time.Now()
	ups, skipped := s.rebuild(candles)
	e.metrics.observeCompute(ctx, time.Since(began), "rebuild")
	e.metrics.countRebuild(ctx)
	if skipped > 0 {
		e.log.WarnContext(ctx, "stored candles skipped in rebuild", "series", id.String(), "skipped", skipped)
	}
	if len(ups) == 0 {
		return s, 0, nil
	}
	latest := ups[len(ups)-1]
	if writes == writeNew {
		if ups, err = e.unwritten(ctx, id, ups); err != nil {
			return nil, 0, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if err := write(ctx, ups); err != nil {
		return nil, 0, fmt.Errorf("write %s: %w", id, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if err := e.publish(ctx, latest); err != nil {
		return nil, 0, err
	}
	e.log.DebugContext(ctx, "series rebuilt", "series", id.String(), "bars", len(candles)-skipped, "written", len(ups))
	return s, len(candles) - skipped, nil
}

// unwritten keeps, of each update, the indicators whose newest stored
// point is not after the update's bar, or has an older version than the
// update: a candle corrected since that point was written (versions only
// grow from bar to bar) changed the values of the bars from it on.
func (e *Engine) unwritten(ctx context.Context, id contract.SeriesID, ups []contract.IndicatorUpdate) ([]contract.IndicatorUpdate, error) {
	names := make([]string, 0, len(ups[len(ups)-1].Values)+len(ups[len(ups)-1].Warming))
	for name := range ups[len(ups)-1].Values {
		names = append(names, name)
	}
	names = append(names, ups[len(ups)-1].Warming...)
	pipe := e.store.Client().Pipeline()
	cmds := make([]*redis.ZSliceCmd, len(names))
	for i, name := range names {
		cmds[i] = pipe.ZRevRangeWithScores(ctx, contract.IndicatorKey(id, name), 0, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read newest indicator points of %s: %w", id, err)
	}
	newest := make(map[string]redisstore.IndicatorPoint, len(names))
	for i, name := range names {
		z := cmds[i].Val()
		if len(z) == 0 {
			continue
		}
		member, _ := z[0].Member.(string)
		var p redisstore.IndicatorPoint
		if err := json.Unmarshal([]byte(member), &p); err != nil {
			return nil, fmt.Errorf("read newest %s point of %s: %w", name, id, err)
		}
		newest[name] = p
	}
	out := ups[:0]
	for _, up := range ups {
		kept := up
		kept.Values = make(map[string]contract.Fields, len(up.Values))
		for name, f := range up.Values {
			if p := newest[name]; up.Start >= p.Start || up.Version > p.Version {
				kept.Values[name] = f
			}
		}
		if len(kept.Values) > 0 {
			out = append(out, kept)
		}
	}
	return out, nil
}
