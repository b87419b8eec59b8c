package series

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
// their order (so candles of one series stay in stream order), and calls
// finish with the batch's results once its updates are sent. Candles of
// series this instance does not run (another owner, a paused user, a
// timeframe outside the mode) are ignored. Otherwise each candle's values
// are computed under the engine's mutex, and HandleCandles returns; the
// values of the whole batch are then written to Redis in one pipeline and
// published, and the stream's acknowledgements awaited, without the mutex
// and while the next batches are computed (the pipeline: at most
// MaxInFlight batches, HandleCandles waits for a free slot; each batch's
// write follows the previous batch's write and its publishes follow the
// previous batch's acknowledgements). A candle that does not fit the state
// (out of order, too old for replay, a gap that Redis cannot fill, a
// series not in memory) starts a rebuild of the series from Redis in the
// background instead, once the updates computed before it are sent: the
// rebuild runs without the engine's mutex, so neither this batch nor any
// other user waits for it.
//
// finish gets one error per candle: nil when the candle is done (ack it;
// also when its write was fenced, see dropFenced); a *Rebuilding when its
// series is rebuilt for it (ack it when Done yields nil); ErrBuilding when
// its series is being rebuilt already (deliver it again after a while;
// the series is kept); otherwise the candle should be delivered again and
// its series is dropped, so that the next candle of the series rebuilds
// it from Redis (and the series' updates computed after the failed ones,
// in the batches in flight, are not sent either). ctx bounds the
// computation and the batch's writes and publishes; finish is called
// exactly once, on another goroutine unless ctx ended before the batch
// got a slot.
func (e *Engine) HandleCandles(ctx context.Context, candles []TracedCandle, finish func([]error)) {
	errs := make([]error, len(candles))
	select {
	case e.pipe.slots <- struct{}{}:
	case <-ctx.Done():
		for i := range errs {
			errs[i] = fmt.Errorf("candle %s %d: %w", candles[i].Candle.SeriesID, candles[i].Candle.Start, ctx.Err())
		}
		finish(errs)
		return
	}
	b := &batch{written: make(chan struct{}), done: make(chan struct{}), finish: finish,
		out:    &outbox{batch: candles, errs: errs},
		series: map[contract.SeriesID]*series{}, failed: map[contract.SeriesID]error{}}
	e.mu.Lock()
	e.begin(b)
	e.compute(ctx, b)
	e.mu.Unlock()
	go e.sendBatch(ctx, b)
}

// compute applies the candles of batch b to their series and queues their
// updates in b.out. The caller holds e.mu.
func (e *Engine) compute(ctx context.Context, b *batch) {
	o := b.out
	for i, tc := range o.batch {
		id := tc.Candle.SeriesID
		if _, runs := e.runsSeries(id); !runs {
			delete(e.series, id)
			continue
		}
		if e.builds[id] != nil {
			o.errs[i] = fmt.Errorf("candle %s %d: %w", id, tc.Candle.Start, ErrBuilding)
			continue
		}
		if err := e.handleCandle(ctx, i, o); err != nil {
			if r, ok := err.(*Rebuilding); ok {
				o.errs[i] = r
				continue
			}
			delete(e.series, id)
			if !errors.Is(err, redisstore.ErrFenced) {
				o.errs[i] = fmt.Errorf("candle %s %d: %w", id, tc.Candle.Start, err)
			}
			continue
		}
		b.handled = append(b.handled, i)
		if s := e.series[id]; s != nil {
			b.series[id] = s
		}
	}
}

// outbox holds the updates of a batch of candles until they are sent.
type outbox struct {
	batch []TracedCandle
	// errs are the batch's results.
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
		return e.rebuildInBatch(i, o)
	}
	filled, ok, err := e.fillGap(cctx, s, c)
	if err != nil {
		return err
	}
	if !ok {
		return e.rebuildInBatch(i, o)
	}
	began := time.Now()
	ups, rebuild, err := s.apply(c)
	e.metrics.observeCompute(cctx, time.Since(began), "update")
	switch {
	case err != nil:
		e.log.WarnContext(cctx, "candle rejected", "series", id.String(), "start", c.Start, "err", err)
		ups = nil
	case rebuild:
		return e.rebuildInBatch(i, o)
	}
	o.add(i, append(filled, ups...))
	return nil
}

// rebuildInBatch starts a rebuild of the series of candle i from Redis in
// the background (rebuildInBackground), which reads Redis once the updates
// queued before it (in this batch and those in flight) are sent, so that
// the series' updates stay in order, and returns the *Rebuilding that
// tells when the candle is done. The caller holds e.mu.
func (e *Engine) rebuildInBatch(i int, o *outbox) error {
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
