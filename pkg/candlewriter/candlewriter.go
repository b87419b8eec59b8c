// Package candlewriter is vigil's one write path for candles: it stores
// them in Redis (versioned add-if-newer) and then publishes the versions
// Redis kept on JetStream VIGIL_CANDLES, with Nats-Msg-Id =
// Candle.MsgID() and the caller's trace context. vigil-feed writes live
// bars, gap fills and backfills through it, and the benchmark runner plays
// the feed with it.
//
// Candles go in batches of Batch: one Redis pipeline, then asynchronous
// publishes of the written ones. The acknowledgements of a batch are
// awaited while the next batch is written to Redis, so the Redis and
// JetStream round trips overlap; publishes still leave in candle order.
package candlewriter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/telemetry"
)

// Batch is how many candles one Redis pipeline and one round of
// JetStream publishes carry.
const Batch = 500

// ackTimeout bounds the wait for one batch's JetStream acknowledgements.
const ackTimeout = 10 * time.Second

// Sentinel errors of Write.
var (
	// ErrStore means Redis did not take the candles; nothing after the
	// failed batch was written.
	ErrStore = errors.New("candle store failed")
	// ErrPublish means candles were stored but JetStream did not
	// acknowledge every publish (Redis stays the source of truth).
	ErrPublish = errors.New("candle publish failed")
)

// Observer counts what a Writer does (the feed's metrics).
type Observer interface {
	// Written counts candle versions stored and sent to JetStream.
	Written(ctx context.Context, n int)
	// Malformed counts one dropped invalid item of kind ("candle").
	Malformed(ctx context.Context, kind string)
	// PublishFailed counts publishes JetStream did not acknowledge.
	PublishFailed(ctx context.Context, n int)
}

// CandleObserver, when an Observer also implements it, gets the candle
// versions stored and sent to JetStream (the feed's freshness per symbol).
type CandleObserver interface {
	WroteCandles(ctx context.Context, cs []contract.Candle)
}

// Writer stores and publishes candles.
type Writer struct {
	store *redisstore.Store
	js    jetstream.JetStream
	log   *slog.Logger
	obs   Observer
}

// New returns a writer over store and js; obs may be nil.
func New(store *redisstore.Store, js jetstream.JetStream, log *slog.Logger, obs Observer) *Writer {
	return &Writer{store: store, js: js, log: log, obs: obs}
}

// Store is the underlying Redis store.
func (w *Writer) Store() *redisstore.Store { return w.store }

// Write stores cs and publishes the written ones. It returns, per candle,
// whether Redis kept it. Candles that fail validation are counted as
// malformed and skipped, never written. A Redis failure stops the write
// (ErrStore); publish failures (ErrPublish) do not, as Redis has the
// candles.
func (w *Writer) Write(ctx context.Context, cs []contract.Candle) ([]bool, error) {
	written := make([]bool, len(cs))
	valid := make([]contract.Candle, 0, len(cs))
	index := make([]int, 0, len(cs))
	for i, c := range cs {
		if err := c.Validate(); err != nil {
			w.malformed(ctx)
			w.log.WarnContext(ctx, "malformed candle dropped", "series", c.SeriesID.String(), "start", c.Start, "err", err)
			continue
		}
		valid = append(valid, c)
		index = append(index, i)
	}
	var errs []error
	var inFlight []jetstream.PubAckFuture
	for lo := 0; lo < len(valid); lo += Batch {
		hi := min(lo+Batch, len(valid))
		kept, err := w.store.WriteCandlesEach(ctx, valid[lo:hi])
		if err != nil {
			errs = append(errs, w.await(ctx, inFlight))
			return written, errors.Join(append(errs, fmt.Errorf("%w: %w", ErrStore, err))...)
		}
		var toPublish []contract.Candle
		for j, ok := range kept {
			written[index[lo+j]] = ok
			if ok {
				toPublish = append(toPublish, valid[lo+j])
			}
		}
		if w.obs != nil {
			w.obs.Written(ctx, len(toPublish))
			if co, ok := w.obs.(CandleObserver); ok && len(toPublish) > 0 {
				co.WroteCandles(ctx, toPublish)
			}
		}
		futures, err := w.publish(ctx, toPublish)
		errs = append(errs, err, w.await(ctx, inFlight))
		inFlight = futures
	}
	errs = append(errs, w.await(ctx, inFlight))
	return written, errors.Join(errs...)
}

func (w *Writer) malformed(ctx context.Context) {
	if w.obs != nil {
		w.obs.Malformed(ctx, "candle")
	}
}

// publish sends cs asynchronously and returns the futures of the
// publishes that left.
func (w *Writer) publish(ctx context.Context, cs []contract.Candle) ([]jetstream.PubAckFuture, error) {
	futures := make([]jetstream.PubAckFuture, 0, len(cs))
	var errs []error
	for _, c := range cs {
		data, err := json.Marshal(c)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: %s: %w", ErrPublish, c.SeriesID, err))
			continue
		}
		msg := nats.NewMsg(contract.CandleSubject(c.SeriesID))
		msg.Data = data
		msg.Header.Set(jetstream.MsgIDHeader, c.MsgID())
		telemetry.Inject(ctx, msg)
		f, err := w.js.PublishMsgAsync(msg)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: %s: %w", ErrPublish, msg.Subject, err))
			continue
		}
		futures = append(futures, f)
	}
	w.publishFailed(ctx, len(errs))
	return futures, errors.Join(errs...)
}

// await waits for every acknowledgement of futures.
func (w *Writer) await(ctx context.Context, futures []jetstream.PubAckFuture) error {
	if len(futures) == 0 {
		return nil
	}
	timeout := time.NewTimer(ackTimeout)
	defer timeout.Stop()
	var errs []error
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			errs = append(errs, fmt.Errorf("%w: %s: %w", ErrPublish, f.Msg().Subject, err))
		case <-timeout.C:
			w.publishFailed(ctx, len(errs)+len(futures)-i)
			return errors.Join(append(errs, fmt.Errorf("%w: %d acknowledgements missing after %v", ErrPublish, len(futures)-i, ackTimeout))...)
		case <-ctx.Done():
			return errors.Join(append(errs, ctx.Err())...)
		}
	}
	w.publishFailed(ctx, len(errs))
	return errors.Join(errs...)
}

func (w *Writer) publishFailed(ctx context.Context, n int) {
	if w.obs != nil && n > 0 {
		w.obs.PublishFailed(ctx, n)
	}
}
