package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/partition"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/service"
	"vigil.dev/pkg/telemetry"
	"vigil.dev/services/indicators/internal/series"
)

// Consumer settings of VIGIL_CANDLES.
const (
	// candleAckWait is how long a delivered candle may take before it is
	// delivered again; a rebuild from Redis fits well within it.
	candleAckWait = 30 * time.Second
	// consumerInactive is how long the server keeps the consumer of an
	// instance that stopped pulling (crashed or cut off).
	consumerInactive = 2 * time.Minute
	// handleTimeout bounds the Redis and NATS work of one batch of
	// candles.
	handleTimeout = 20 * time.Second
	// retryDelay is how long a failed candle waits before redelivery.
	retryDelay = time.Second
	// pullMessages is how many candles the client pulls ahead.
	pullMessages = 256
	// maxBatch is the most candles handled as one batch: one Redis
	// pipeline and one round of publishes. With the pulled candles, those
	// waiting for the batch loop, the batch being formed and the
	// series.MaxInFlight batches being computed and sent, at most
	// pullMessages + (series.MaxInFlight+2)*maxBatch + 1 candles are
	// delivered and not yet acked (1537), below maxAckPending.
	maxBatch = 256
	// maxAckPending is the most candles the server delivers and waits
	// for acks of (the pipeline's, plus those waiting for their series'
	// rebuild).
	maxAckPending = 2000
)

// ErrCandle reports a candle message that is not a valid contract.Candle
// for its subject.
var ErrCandle = errors.New("bad candle message")

// candleConsumer is this instance's consumer of its partitions of
// VIGIL_CANDLES (pkg/partition: durable vigil-indicators-<id>, filtered on
// the owned partitions, removed by the server once the instance is gone):
// it hands the candles in batches to the engine and acks each candle after
// the engine's writes and publishes.
type candleConsumer struct {
	*partition.Consumer
	members partition.Members
	rt      *service.Runtime
	engine  *series.Engine
	tracer  trace.Tracer
	// pending is the number of candles waiting behind the last one
	// delivered, reported as the consumer lag gauge.
	pending atomic.Int64
}

// newCandleConsumer creates the consumer, owning no partition yet; Claim
// and Start claim them, each with a new fencing epoch taken in store. The
// engine is set before Claim.
func newCandleConsumer(ctx context.Context, rt *service.Runtime, members partition.Members, partitions int, store *redisstore.Store) (*candleConsumer, error) {
	c := &candleConsumer{rt: rt, members: members, tracer: otel.Tracer(series.MeterName)}
	var err error
	c.Consumer, err = partition.New(ctx, partition.Options{
		JS: rt.JS, NC: rt.NC, Stream: natsx.CandlePartitions, Count: partitions,
		Service: contract.ServiceIndicators, Members: members,
		Consumer: jetstream.ConsumerConfig{
			Description:       "vigil-indicators instance: the candles of the partitions it owns",
			DeliverPolicy:     jetstream.DeliverNewPolicy,
			AckPolicy:         jetstream.AckExplicitPolicy,
			AckWait:           candleAckWait,
			MaxAckPending:     maxAckPending,
			InactiveThreshold: consumerInactive,
			MemoryStorage:     true,
		},
		PullMessages: pullMessages, MaxBatch: maxBatch,
		Handle: c.handle,
		Settle: func(ctx context.Context) error {
			if c.engine == nil {
				return nil
			}
			return c.engine.Settle(ctx)
		},
		Changed: func(ctx context.Context) { c.engine.ConvergeAll(ctx) },
		Lost:    func(ctx context.Context) { c.engine.ResetAll(ctx) },
		Fence: func(ctx context.Context, k int) (int64, error) {
			return store.NewEpoch(ctx, redisstore.FenceKey(contract.ServiceIndicators, k))
		},
		Log: rt.Log,
	})
	if err != nil {
		return nil, err
	}
	if _, err := otel.Meter(series.MeterName).Int64ObservableGauge("vigil.indicators.consumer.pending",
		metric.WithUnit("{candle}"), metric.WithDescription("candles waiting in this instance's consumer"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(c.pending.Load())
			return nil
		})); err != nil {
		return nil, err
	}
	return c, nil
}

// partitionOf is the partition of VIGIL_CANDLES that series id is in.
func (c *candleConsumer) partitionOf(id contract.SeriesID) int {
	return c.PartitionOf(id.User, strconv.FormatInt(id.ExchangeID, 10), id.Symbol, string(id.Timeframe))
}

// Fence is this instance's right to write series id: the fence of its
// partition with the epoch taken when this instance claimed it (0 when
// it does not own it: refused).
func (c *candleConsumer) Fence(id contract.SeriesID) redisstore.Fence {
	k := c.partitionOf(id)
	return redisstore.Fence{Key: redisstore.FenceKey(contract.ServiceIndicators, k), Epoch: c.Epoch(k)}
}

// Fenced gives up the partition of series id after Redis refused a write
// under fence f (another instance claimed it since).
func (c *candleConsumer) Fenced(id contract.SeriesID, f redisstore.Fence) {
	c.Consumer.Fenced(c.partitionOf(id), f.Epoch)
}

// Members lists the live instances.
func (c *candleConsumer) Members() []string { return c.members.Members() }

// Owns reports whether this instance owns a series key
// (SeriesID.String(): user/exchange/symbol/tf), i.e. its partition.
func (c *candleConsumer) Owns(key string) bool {
	return c.OwnsKey(strings.SplitN(key, "/", 4)...)
}

// handle processes a batch of candle messages: each candle continues the
// feed's trace in a span of its own, and the batch's writes and publishes
// run in a span linked to them. It returns once the engine computed the
// batch; when the engine wrote and published its updates (while the next
// batches are computed), it acks each candle, or naks it (for a retry)
// when that failed. A message that is not a valid candle is terminated.
func (c *candleConsumer) handle(msgs []jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), handleTimeout)
	if md, err := msgs[len(msgs)-1].Metadata(); err == nil {
		c.pending.Store(int64(md.NumPending))
	}
	candles := make([]series.TracedCandle, 0, len(msgs))
	acks := make([]jetstream.Msg, 0, len(msgs))
	spans := make([]trace.Span, 0, len(msgs))
	links := make([]trace.Link, 0, len(msgs))
	for _, msg := range msgs {
		mctx := telemetry.Extract(ctx, nats.Header(msg.Headers()))
		mctx, span := c.tracer.Start(mctx, "vigil-indicators candle", trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(attribute.String("messaging.destination.name", msg.Subject())))
		candle, err := decodeCandle(msg.Subject(), msg.Data())
		if err != nil {
			c.rt.Log.WarnContext(mctx, "candle message dropped", "subject", msg.Subject(), "err", err)
			span.SetStatus(codes.Error, err.Error())
			span.End()
			_ = msg.Term()
			continue
		}
		candles = append(candles, series.TracedCandle{Ctx: mctx, Candle: candle})
		acks = append(acks, msg)
		spans = append(spans, span)
		links = append(links, trace.LinkFromContext(mctx))
	}
	if len(candles) == 0 {
		cancel()
		return
	}
	bctx, batchSpan := c.tracer.Start(ctx, "vigil-indicators candle batch", trace.WithLinks(links...),
		trace.WithAttributes(attribute.Int("messaging.batch.message_count", len(candles))))
	c.engine.HandleCandles(bctx, candles, func(errs []error) {
		defer cancel()
		c.settle(candles, acks, spans, errs, batchSpan)
	})
}

// settle acks, naks or leaves to its series' rebuild each candle of a
// batch by its result from the engine, and ends the spans.
func (c *candleConsumer) settle(candles []series.TracedCandle, acks []jetstream.Msg, spans []trace.Span, errs []error, batchSpan trace.Span) {
	failed := 0
	for i, err := range errs {
		tc, msg, span := candles[i], acks[i], spans[i]
		var rebuilding *series.Rebuilding
		if errors.As(err, &rebuilding) {
			// Its series is rebuilt for it in the background: ack it
			// when that is done.
			go c.ackAfter(tc, msg, span, rebuilding)
			continue
		}
		if errors.Is(err, series.ErrBuilding) {
			// Its series is being rebuilt: deliver it again after.
			c.rt.Log.DebugContext(tc.Ctx, "candle waits for its series' rebuild", "series", tc.Candle.SeriesID.String(), "start", tc.Candle.Start)
			_ = msg.NakWithDelay(retryDelay)
		} else if err != nil {
			failed++
			c.rt.Log.ErrorContext(tc.Ctx, "candle failed; retrying", "series", tc.Candle.SeriesID.String(), "start", tc.Candle.Start, "err", err)
			span.SetStatus(codes.Error, err.Error())
			_ = msg.NakWithDelay(retryDelay)
		} else if err := msg.Ack(); err != nil {
			c.rt.Log.WarnContext(tc.Ctx, "candle ack failed", "subject", msg.Subject(), "err", err)
		}
		span.End()
	}
	if failed > 0 {
		batchSpan.SetStatus(codes.Error, fmt.Sprintf("%d of %d candles failed", failed, len(candles)))
	}
	batchSpan.End()
}

// inProgressEvery is how often a candle waiting for its series' rebuild
// tells the server it is still being worked on (well within
// candleAckWait).
const inProgressEvery = candleAckWait / 3

// ackAfter acks a candle once the rebuild of its series that it started
// is done, or naks it (for a retry) when the rebuild failed or was
// stopped; meanwhile it keeps the candle from being delivered again.
func (c *candleConsumer) ackAfter(tc series.TracedCandle, msg jetstream.Msg, span trace.Span, r *series.Rebuilding) {
	defer span.End()
	tick := time.NewTicker(inProgressEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			_ = msg.InProgress()
		case err := <-r.Done():
			if err != nil {
				c.rt.Log.DebugContext(tc.Ctx, "candle's rebuild did not complete; retrying", "series", tc.Candle.SeriesID.String(), "start", tc.Candle.Start, "err", err)
				span.SetStatus(codes.Error, err.Error())
				_ = msg.NakWithDelay(retryDelay)
			} else if err := msg.Ack(); err != nil {
				c.rt.Log.WarnContext(tc.Ctx, "candle ack failed", "subject", msg.Subject(), "err", err)
			}
			return
		}
	}
}

// decodeCandle decodes and validates a candle and checks that it belongs
// to the subject it came on.
func decodeCandle(subject string, data []byte) (contract.Candle, error) {
	var c contract.Candle
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("%w: %w", ErrCandle, err)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%w: %w", ErrCandle, err)
	}
	published, _ := natsx.Published(subject)
	kind, s, err := contract.ParseSeriesSubject(published)
	if err != nil {
		return c, fmt.Errorf("%w: %w", ErrCandle, err)
	}
	if kind != "candle" || s.User != c.User || s.ExchangeID != c.ExchangeID || s.Symbol != c.Symbol || s.Timeframe != c.Timeframe {
		return c, fmt.Errorf("%w: series %s does not match subject %s", ErrCandle, c.SeriesID, subject)
	}
	return c, nil
}
