package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
)

// TracedCandle is a candle update with the context it arrived in, which
// carries the trace the feed started: everything done for the candle (its
// reads, its updates' messages) continues that trace.
type TracedCandle struct {
	Ctx    context.Context
	Candle contract.Candle
}

// HandleCandles processes a batch of candle updates from VIGIL_CANDLES, in
// their order (so candles of one series stay in stream order). Candles of
// series this instance does not run (another owner, a paused user, a
// timeframe outside the mode) are ignored. Otherwise each candle's values
// are computed, and the values of the whole batch are written to Redis in
// one pipeline and published, the stream's acknowledgements awaited,
// before it returns; a candle that does not fit the state (out of order,
// too old for replay, a gap that Redis cannot fill, a series not in
// memory) starts a rebuild of the series from Redis in the background
// instead, after the updates computed before it were sent: the rebuild
// runs without the engine's mutex, so neither this batch nor any other
// user waits for it.
//
// The result has one error per candle: nil when the candle is done (ack
// it; also when its write was fenced, see flush); a *Rebuilding when its
// series is rebuilt for it (ack it when Done yields nil); ErrBuilding when
// its series is being rebuilt already (deliver it again after a while;
// the series is kept); otherwise the candle should be delivered again and
// its series is dropped, so that the next candle of the series rebuilds
// it from Redis.
// ctx bounds the batch's writes and publishes; control verbs wait for the
// whole batch.
func (e *Engine) HandleCandles(ctx context.Context, batch []TracedCandle) []error {
	errs := make([]error, len(batch))
	e.mu.Lock()
	defer e.mu.Unlock()
	o := &outbox{batch: batch, errs: errs}
	var handled []int
	for i, tc := range batch {
		id := tc.Candle.SeriesID
		if _, runs := e.runsSeries(id); !runs {
			delete(e.series, id)
			continue
		}
		if e.builds[id] != nil {
			errs[i] = fmt.Errorf("candle %s %d: %w", id, tc.Candle.Start, ErrBuilding)
			continue
		}
		if err := e.handleCandle(ctx, i, o); err != nil {
			if r, ok := err.(*Rebuilding); ok {
				errs[i] = r
				continue
			}
			delete(e.series, id)
			if !errors.Is(err, redisstore.ErrFenced) {
				errs[i] = fmt.Errorf("candle %s %d: %w", id, tc.Candle.Start, err)
			}
			continue
		}
		handled = append(handled, i)
	}
	e.flush(ctx, o)
	now := time.Now()
	for _, i := range handled {
		if c := batch[i].Candle; errs[i] == nil {
			u := e.users[c.User]
			u.lastCandle, u.lag = now, now.Sub(time.UnixMicro(c.Version))
		}
	}
	return errs
}

// outbox holds the updates of a batch of candles until they are sent.
type outbox struct {
	batch []TracedCandle
	// errs are the batch's results, set for the candles whose updates
	// could not be sent.
	errs    []error
	pending []outgoing
	// from are the indexes of the candles with updates in pending.
	from []int
}

// add queues the updates of candle i.
func (o *outbox) add(i int, ups []contract.IndicatorUpdate) {
	if len(ups) == 0 {
		return
	}
	for _, up := range ups {
		o.pending = append(o.pending, outgoing{ctx: o.batch[i].Ctx, update: up})
	}
	o.from = append(o.from, i)
}

// flush sends the queued updates. When that fails, every candle they came
// from gets the error and its series is dropped (it is rebuilt from Redis
// on its next candle, so nothing computed but unsent is lost). The
// caller holds e.mu.
//
// A candle whose series' updates were fenced is done (acked): its
// partition belongs to another instance, which claimed it before the
// refused write and rebuilt the series from Redis after that, where the
// feed had stored the candle before publishing it.
func (e *Engine) flush(ctx context.Context, o *outbox) {
	err := e.send(ctx, o.pending)
	if errors.Is(err, redisstore.ErrFenced) {
		err = nil // write dropped the fenced series; the others were sent
	}
	if err != nil {
		for _, i := range o.from {
			c := o.batch[i].Candle
			o.errs[i] = fmt.Errorf("candle %s %d: %w", c.SeriesID, c.Start, err)
			delete(e.series, c.SeriesID)
		}
	}
	o.pending, o.from = o.pending[:0], o.from[:0]
}

// handleCandle computes candle i of the batch and queues its updates in
// o, or rebuilds its series. The caller holds e.mu.
func (e *Engine) handleCandle(ctx context.Context, i int, o *outbox) error {
	cctx, c := o.batch[i].Ctx, o.batch[i].Candle
	id := c.SeriesID
	s := e.series[id]
	if s != nil && e.isForgotten(id) {
		s = nil
	}
	if s == nil {
		return e.rebuildInBatch(ctx, i, o)
	}
	filled, ok, err := e.fillGap(cctx, s, c)
	if err != nil {
		return err
	}
	if !ok {
		return e.rebuildInBatch(ctx, i, o)
	}
	began := time.Now()
	ups, rebuild, err := s.apply(c)
	e.metrics.observeCompute(cctx, time.Since(began), "update")
	switch {
	case err != nil:
		e.log.WarnContext(cctx, "candle rejected", "series", id.String(), "start", c.Start, "err", err)
		ups = nil
	case rebuild:
		return e.rebuildInBatch(ctx, i, o)
	}
	o.add(i, append(filled, ups...))
	return nil
}

// rebuildInBatch starts a rebuild of the series of candle i from Redis in
// the background (rebuildInBackground), after sending the updates queued
// before it, so that the series' updates stay in order, and returns the
// *Rebuilding that tells when the candle is done. The caller holds e.mu.
func (e *Engine) rebuildInBatch(ctx context.Context, i int, o *outbox) error {
	e.flush(ctx, o)
	return e.rebuildInBackground(o.batch[i].Ctx, o.batch[i].Candle.SeriesID)
}

// backgroundBuildTimeout bounds a rebuild a candle started.
const backgroundBuildTimeout = 5 * time.Minute

// Rebuilding is the result of a candle whose series does not fit it (a
// gap Redis cannot fill, a correction older than the replay depth, a
// series not in memory): the series is rebuilt from every stored candle
// in the background, without holding the engine's mutex, so the batch and
// every other series go on meanwhile. The feed stores a candle before it
// publishes it, so the rebuild reads this candle: it is done (ack it) when
// Done yields nil, else it should be delivered again.
type Rebuilding struct {
	done chan error
}

// Error says that the candle waits for its series' rebuild.
func (r *Rebuilding) Error() string { return "the candle's series is being rebuilt from Redis" }

// Done yields the rebuild's outcome once, when it has ended.
func (r *Rebuilding) Done() <-chan error { return r.done }

// rebuildInBackground registers a build of series id and runs it on a
// goroutine of its own, with the trace of ctx (a candle's) but not its
// deadline: until it ends, stopBuilds stops it or Close ends it, at most
// backgroundBuildTimeout. The caller holds e.mu and no build of id is in
// flight.
func (e *Engine) rebuildInBackground(ctx context.Context, id contract.SeriesID) *Rebuilding {
	r := &Rebuilding{done: make(chan error, 1)}
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), backgroundBuildTimeout)
	unbind := context.AfterFunc(e.bg, cancel)
	b, buildCtx, err := e.beginBuild(bctx, id)
	if err != nil {
		unbind()
		cancel()
		r.done <- err
		return r
	}
	e.background.Add(1)
	go func() {
		defer e.background.Done()
		defer cancel()
		defer unbind()
		_, err := e.finishBuild(bctx, buildCtx, id, b, writeNew)
		e.mu.Unlock()
		if err != nil && !errors.Is(err, errBuildStopped) {
			e.log.ErrorContext(bctx, "rebuild failed; the candle is delivered again", "series", id.String(), "err", err)
		}
		r.done <- err
	}()
	return r
}

// fillGap closes the bars between the last closed bar of s and candle c
// from the candles Redis holds for them: bars this instance has not seen
// (its candles arrive out of order within one feed flush, or were
// published while it did not own the series). Every stored bar before c
// counts as closed. It returns their updates; ok is false when the state
// cannot take them and the series must be rebuilt. Without stored bars in
// between, the market had no trades then and c is simply the next bar.
//
// A series without closed bars was set up when Redis held none of its
// bars before c (and before its in-progress bar): when Redis holds some
// now, they were stored meanwhile and are delivered after c, so c must
// not start the series (every later value would miss them, and a rebuild
// could not replace those values, written under the same versions): ok
// is false.
func (e *Engine) fillGap(ctx context.Context, s *series, c contract.Candle) (ups []contract.IndicatorUpdate, ok bool, err error) {
	last, has := s.lastClosed()
	if !has {
		first := c.Start
		if s.open.start > 0 {
			first = min(first, s.open.start)
		}
		earlier, err := e.store.CountCandles(ctx, c.SeriesID, 0, first-1)
		return nil, earlier == 0 && err == nil, err
	}
	if c.Start <= last.start+int64(c.Timeframe.Duration()/time.Second) {
		return nil, true, nil
	}
	between, err := e.store.Candles(ctx, c.SeriesID, last.start+1, c.Start-1)
	if err != nil {
		return nil, false, err
	}
	for _, b := range between {
		b.Closed = true
		filled, rebuild, err := s.apply(b)
		if rebuild || err != nil {
			return nil, false, nil
		}
		if now, _ := s.lastClosed(); now.start != b.Start {
			return nil, false, nil // the state kept an in-progress version of the bar
		}
		ups = append(ups, filled...)
	}
	return ups, true, nil
}
