package series

// This file: the batches of candle updates in flight between their
// computation (under e.mu) and the last acknowledgement of their updates.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
)

// MaxInFlight is how many batches of candles may be computed and not yet
// sent (written to Redis, published and acknowledged) at once: while one
// batch is published, the next is written and a third computed.
const MaxInFlight = 3

// pipeline orders the batches in flight. Every batch is numbered when its
// computation starts (under e.mu); its Redis write starts after the
// previous batch's write, its publishes after the previous batch is
// finished, so the updates of a series reach Redis and the stream in the
// order they were computed.
type pipeline struct {
	// slots holds a token per batch in flight (MaxInFlight).
	slots chan struct{}

	mu sync.Mutex
	// submitted numbers the last batch whose computation started, tail is
	// that batch; finished is the number of the last batch finished
	// (they finish in order), changed is closed when it grows.
	submitted, finished uint64
	tail                *batch
	changed             chan struct{}
	// poisoned are the series whose updates failed to be written or
	// published: their updates in the batches numbered up to the value,
	// computed on the state that included the failed ones, are not sent
	// either (their candles are delivered again and the series is rebuilt
	// from Redis). The value is math.MaxUint64 until the series is dropped.
	poisoned map[contract.SeriesID]uint64
}

func newPipeline() pipeline {
	return pipeline{slots: make(chan struct{}, MaxInFlight), changed: make(chan struct{}), poisoned: map[contract.SeriesID]uint64{}}
}

// batch is one batch of candles on its way through the pipeline.
type batch struct {
	seq  uint64
	prev *batch
	// written is closed when the batch's Redis write is done, done when
	// the batch is finished.
	written, done chan struct{}
	// finish receives the batch's results (HandleCandles).
	finish func([]error)
	// out holds the computed updates and the results.
	out *outbox
	// series are the series the updates were computed on, to drop those
	// whose updates failed unless a rebuild replaced them since.
	series map[contract.SeriesID]*series
	// handled are the candles applied to their series.
	handled []int
	// failed are the series whose updates were not sent, and why.
	failed map[contract.SeriesID]error
}

// last is the number of the last batch whose computation started. The
// caller holds e.mu, so that batch is computed.
func (e *Engine) last() uint64 {
	e.pipe.mu.Lock()
	defer e.pipe.mu.Unlock()
	return e.pipe.submitted
}

// begin numbers a new batch and makes it the tail. The caller holds e.mu.
func (e *Engine) begin(b *batch) {
	e.pipe.mu.Lock()
	defer e.pipe.mu.Unlock()
	e.pipe.submitted++
	b.seq, b.prev, e.pipe.tail = e.pipe.submitted, e.pipe.tail, b
}

// awaitSent waits until every batch up to number seq is finished, or ctx
// ends. The caller does not hold e.mu.
func (e *Engine) awaitSent(ctx context.Context, seq uint64) error {
	for {
		e.pipe.mu.Lock()
		finished, changed := e.pipe.finished, e.pipe.changed
		e.pipe.mu.Unlock()
		if finished >= seq {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the candle updates in flight: %w", ctx.Err())
		}
	}
}

// Settle waits until the updates of every batch of candles handed to
// HandleCandles so far are sent and the batches' results given, or ctx
// ends (partition.Options.Settle).
func (e *Engine) Settle(ctx context.Context) error {
	e.pipe.mu.Lock()
	seq := e.pipe.submitted
	e.pipe.mu.Unlock()
	return e.awaitSent(ctx, seq)
}

// unpoisoned drops from b's updates those of series poisoned for b (and
// of series already failed in b), marking them failed with a note of why.
func (e *Engine) unpoisoned(b *batch, pending []outgoing) []outgoing {
	e.pipe.mu.Lock()
	defer e.pipe.mu.Unlock()
	return slices.DeleteFunc(pending, func(o outgoing) bool {
		id := o.update.SeriesID
		if b.failed[id] != nil {
			return true
		}
		if until, ok := e.pipe.poisoned[id]; ok && b.seq <= until {
			b.failed[id] = fmt.Errorf("%w: updates of the series computed before it failed were not sent", errPoisoned)
			return true
		}
		return false
	})
}

// errPoisoned reports updates not sent because earlier updates of their
// series failed.
var errPoisoned = errors.New("earlier updates of the series failed")

// fail marks the series of the updates failed in b with err and poisons
// them for the batches after b until they are dropped.
func (e *Engine) fail(b *batch, out []outgoing, err error) {
	e.pipe.mu.Lock()
	defer e.pipe.mu.Unlock()
	for _, o := range out {
		id := o.update.SeriesID
		if b.failed[id] == nil {
			b.failed[id] = err
		}
		e.pipe.poisoned[id] = math.MaxUint64
	}
}

// sendBatch runs batch b through the pipeline on its own goroutine: its Redis
// write after the previous batch's, its publishes after the previous
// batch finished, then its results under e.mu, then finish.
func (e *Engine) sendBatch(ctx context.Context, b *batch) {
	defer func() { <-e.pipe.slots }()
	if b.prev != nil {
		<-b.prev.written
	}
	out := e.unpoisoned(b, b.out.pending)
	fences, writeErr := e.writeFenced(ctx, updatesOf(out))
	var fenced *redisstore.FencedError
	switch {
	case errors.As(writeErr, &fenced):
		// Refused series are done (see dropFenced): not published.
		out = slices.DeleteFunc(out, func(o outgoing) bool { return slices.Contains(fenced.Series, o.update.SeriesID) })
	case writeErr != nil:
		e.fail(b, out, fmt.Errorf("write %d indicator updates: %w", len(out), writeErr))
		out = nil
	}
	close(b.written)
	if b.prev != nil {
		<-b.prev.done
		b.prev = nil
	}
	out = e.unpoisoned(b, out)
	if err := e.publishAll(ctx, out); err != nil {
		e.fail(b, out, err)
	}
	e.settle(ctx, b, fences, writeErr)
	close(b.done)
	b.finish(b.out.errs)
}

// settle ends batch b under e.mu: it drops the fenced series and the
// failed ones (unless rebuilt since), gives the candles of failed series
// their error, records the users' latest candle and marks b finished.
//
// A candle whose series' updates were fenced is done (acked): its
// partition belongs to another instance, which claimed it before the
// refused write and rebuilt the series from Redis after that, where the
// feed had stored the candle before publishing it.
func (e *Engine) settle(ctx context.Context, b *batch, fences map[contract.SeriesID]redisstore.Fence, writeErr error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dropFenced(ctx, fences, writeErr)
	for id, err := range b.failed {
		if s := b.series[id]; s != nil && e.series[id] == s {
			delete(e.series, id)
		}
		if !errors.Is(err, errPoisoned) {
			e.rewrite[id] = true
		}
	}
	for _, i := range b.out.from {
		c := b.out.batch[i].Candle
		if err := b.failed[c.SeriesID]; err != nil {
			b.out.errs[i] = fmt.Errorf("candle %s %d: %w", c.SeriesID, c.Start, err)
		}
	}
	now := time.Now()
	for _, i := range b.handled {
		if c := b.out.batch[i].Candle; b.out.errs[i] == nil {
			if u := e.users[c.User]; u != nil {
				u.lastCandle, u.lag = now, now.Sub(time.UnixMicro(c.Version))
			}
		}
	}
	e.pipe.mu.Lock()
	defer e.pipe.mu.Unlock()
	// The failed series are dropped now: batches computed from here on
	// do not carry updates computed on their failed state.
	for id, err := range b.failed {
		if !errors.Is(err, errPoisoned) {
			e.pipe.poisoned[id] = e.pipe.submitted
		}
	}
	for id, until := range e.pipe.poisoned {
		if until <= b.seq {
			delete(e.pipe.poisoned, id)
		}
	}
	if e.pipe.tail == b {
		e.pipe.tail = nil
	}
	e.pipe.finished = b.seq
	close(e.pipe.changed)
	e.pipe.changed = make(chan struct{})
}

// updatesOf are the updates of out.
func updatesOf(out []outgoing) []contract.IndicatorUpdate {
	ups := make([]contract.IndicatorUpdate, len(out))
	for i, o := range out {
		ups[i] = o.update
	}
	return ups
}
