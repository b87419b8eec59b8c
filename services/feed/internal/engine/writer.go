package engine

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

// writeBatch is how many candles one Redis pipeline and one round of
// JetStream publishes carry.
const writeBatch = 500

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

// Writer stores candles in Redis (versioned add-if-newer) and then
// publishes the versions that Redis kept on JetStream VIGIL_CANDLES, with
// Nats-Msg-Id = Candle.MsgID() and the caller's trace context.
type Writer struct {
	store   *redisstore.Store
	js      jetstream.JetStream
	log     *slog.Logger
	metrics *Metrics
}

// NewWriter returns a writer over store and js; metrics may be nil.
func NewWriter(store *redisstore.Store, js jetstream.JetStream, log *slog.Logger, metrics *Metrics) *Writer {
	return &Writer{store: store, js: js, log: log, metrics: metrics}
}

// Store is the underlying Redis store.
func (w *Writer) Store() *redisstore.Store { return w.store }

// Write stores cs and publishes the written ones. It returns, per candle,
// whether Redis kept it. Candles that fail validation are counted as
// malformed and skipped, never written.
func (w *Writer) Write(ctx context.Context, cs []contract.Candle) ([]bool, error) {
	written := make([]bool, len(cs))
	valid := make([]contract.Candle, 0, len(cs))
	index := make([]int, 0, len(cs))
	for i, c := range cs {
		if err := c.Validate(); err != nil {
			w.metrics.malformed(ctx, "candle")
			w.log.WarnContext(ctx, "malformed candle dropped", "series", c.SeriesID.String(), "start", c.Start, "err", err)
			continue
		}
		valid = append(valid, c)
		index = append(index, i)
	}
	var errs []error
	for lo := 0; lo < len(valid); lo += writeBatch {
		hi := min(lo+writeBatch, len(valid))
		ok, err := w.store.WriteCandlesEach(ctx, valid[lo:hi])
		if err != nil {
			return written, fmt.Errorf("%w: %w", ErrStore, err)
		}
		var toPublish []contract.Candle
		for j, kept := range ok {
			written[index[lo+j]] = kept
			if kept {
				toPublish = append(toPublish, valid[lo+j])
			}
		}
		w.metrics.written(ctx, len(toPublish))
		if err := w.publish(ctx, toPublish); err != nil {
			errs = append(errs, err)
		}
	}
	return written, errors.Join(errs...)
}

// publish sends cs asynchronously and waits for every acknowledgement.
func (w *Writer) publish(ctx context.Context, cs []contract.Candle) error {
	futures := make([]jetstream.PubAckFuture, 0, len(cs))
	var errs []error
	for _, c := range cs {
		data, err := json.Marshal(c)
		if err != nil {
			errs = append(errs, err)
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
	timeout := time.NewTimer(ackTimeout)
	defer timeout.Stop()
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			errs = append(errs, fmt.Errorf("%w: %s: %w", ErrPublish, f.Msg().Subject, err))
		case <-timeout.C:
			return errors.Join(append(errs, fmt.Errorf("%w: no acknowledgement within %v", ErrPublish, ackTimeout))...)
		case <-ctx.Done():
			return errors.Join(append(errs, ctx.Err())...)
		}
	}
	if len(errs) > 0 {
		w.metrics.publishFailed(ctx, len(errs))
	}
	return errors.Join(errs...)
}
