package indicators

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
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
	"vigil.dev/pkg/service"
	"vigil.dev/pkg/telemetry"
	"vigil.dev/services/indicators/internal/engine"
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
	// pipeline and one round of publishes. With the pulled candles and
	// those waiting for the batch loop, at most pullMessages + 2*maxBatch
	// + 1 candles are delivered and not yet acked, below MaxAckPending.
	maxBatch = 256
)

// Errors of the candle consumer.
var (
	// ErrCandle reports a candle message that is not a valid
	// contract.Candle for its subject.
	ErrCandle = errors.New("bad candle message")
	// errConsumerStopped reports that the consumer was stopped for good
	// (shutdown), so it is not recreated.
	errConsumerStopped = errors.New("candle consumer stopped")
)

// candleConsumer is this instance's consumer of VIGIL_CANDLES (durable
// vigil-indicators-<instance>, removed by the server once the instance is
// gone): it sees every candle and hands them in batches to the engine,
// which ignores the series this instance does not run, and acks each
// candle after the engine's writes and publishes. Consume's callback only passes each candle on to the batch
// loop, which takes whatever arrived while it handled the previous batch:
// one candle at a time when they trickle in, up to maxBatch under load.
type candleConsumer struct {
	rt     *service.Runtime
	engine *engine.Engine
	name   string
	tracer trace.Tracer
	// pending is the number of candles waiting behind the last one
	// delivered, reported as the consumer lag gauge.
	pending atomic.Int64

	// delivered takes the candles from Consume's callback to the batch
	// loop; closed by stop after the last callback. batched is closed
	// when the batch loop has handled the last candle.
	delivered chan jetstream.Msg
	batched   chan struct{}

	mu       sync.Mutex
	consumer jetstream.Consumer
	consume  jetstream.ConsumeContext
	// stopped is set by stop: no Consume starts after it.
	stopped bool
	// lost is signalled when the consumer disappeared or the connection
	// was re-established: candles may have been missed.
	lost chan struct{}
}

func newCandleConsumer(ctx context.Context, rt *service.Runtime, e *engine.Engine, instance string) (*candleConsumer, error) {
	c := &candleConsumer{rt: rt, engine: e, name: contract.ServiceIndicators + "-" + instance,
		tracer: otel.Tracer(engine.MeterName), lost: make(chan struct{}, 1),
		delivered: make(chan jetstream.Msg, maxBatch), batched: make(chan struct{})}
	if err := c.create(ctx); err != nil {
		return nil, err
	}
	if _, err := otel.Meter(engine.MeterName).Int64ObservableGauge("vigil.indicators.consumer.pending",
		metric.WithUnit("{candle}"), metric.WithDescription("candles waiting in this instance's consumer"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(c.pending.Load())
			return nil
		})); err != nil {
		return nil, err
	}
	return c, nil
}

// create creates the consumer, or finds it unchanged.
func (c *candleConsumer) create(ctx context.Context) error {
	// Durable, so the server replicates it like the stream: an ephemeral
	// consumer lives on one server, and when that server dies its pull
	// requests find no responders for good (seen on a 3-node cluster).
	// InactiveThreshold still removes it once this instance is gone.
	cons, err := c.rt.JS.CreateOrUpdateConsumer(ctx, contract.StreamCandles, jetstream.ConsumerConfig{
		Durable:           c.name,
		Description:       "vigil-indicators instance: every candle, processes the series it owns",
		FilterSubject:     contract.CandleSubjects,
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           candleAckWait,
		MaxAckPending:     1000,
		InactiveThreshold: consumerInactive,
		MemoryStorage:     true,
	})
	if err != nil {
		return fmt.Errorf("consumer %s: %w", c.name, err)
	}
	c.mu.Lock()
	c.consumer = cons
	c.mu.Unlock()
	return nil
}

// start begins consuming, and recovers in the background (until ctx
// ends) whenever candles may have been missed.
func (c *candleConsumer) start(ctx context.Context) error {
	if err := c.consume1(); err != nil {
		return err
	}
	go c.handleBatches()
	reconnected := c.rt.NC.Opts.ReconnectedCB
	c.rt.NC.SetReconnectHandler(func(nc *nats.Conn) {
		if reconnected != nil {
			reconnected(nc)
		}
		c.signalLost()
	})
	go c.recover(ctx)
	return nil
}

func (c *candleConsumer) signalLost() {
	select {
	case c.lost <- struct{}{}:
	default:
	}
}

// consume1 starts one Consume on the current consumer.
func (c *candleConsumer) consume1() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errConsumerStopped
	}
	cc, err := c.consumer.Consume(func(msg jetstream.Msg) { c.delivered <- msg }, jetstream.PullMaxMessages(pullMessages),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				c.signalLost()
			}
			c.rt.Log.Warn("candle consumer", "consumer", c.name, "err", err)
		}))
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.name, err)
	}
	c.consume = cc
	return nil
}

// recover recreates the consumer and rebuilds every series from Redis
// after the consumer was lost or the connection came back.
func (c *candleConsumer) recover(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.lost:
		}
		c.rt.Log.Warn("candles may have been missed; recreating the consumer and rebuilding the series", "consumer", c.name)
		c.mu.Lock()
		c.consume.Stop()
		c.mu.Unlock()
		for {
			err := c.create(ctx)
			if err == nil {
				err = c.consume1()
			}
			if err == nil {
				break
			}
			if errors.Is(err, errConsumerStopped) {
				return
			}
			c.rt.Log.Error("recreating the candle consumer failed", "consumer", c.name, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
		c.engine.ResetAll(ctx)
	}
}

// stop drains the consumer: the candles delivered are handled and acked.
func (c *candleConsumer) stop(ctx context.Context) error {
	c.mu.Lock()
	c.stopped = true
	cc := c.consume
	c.mu.Unlock()
	cc.Drain()
	select {
	case <-cc.Closed(): // after the last callback
	case <-ctx.Done():
		cc.Stop()
		return fmt.Errorf("drain %s: %w", c.name, ctx.Err())
	}
	close(c.delivered)
	select {
	case <-c.batched:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("drain %s: %w", c.name, ctx.Err())
	}
}

// delete removes the consumer from the stream on shutdown.
func (c *candleConsumer) delete(ctx context.Context) error {
	err := c.rt.JS.DeleteConsumer(ctx, contract.StreamCandles, c.name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	return err
}

// handleBatches handles the delivered candles in batches until stop
// closes delivered: each batch is the candle that arrived first and those
// that arrived while the previous batch was handled, up to maxBatch.
func (c *candleConsumer) handleBatches() {
	defer close(c.batched)
	batch := make([]jetstream.Msg, 0, maxBatch)
	for msg := range c.delivered {
		batch = append(batch[:0], msg)
	fill:
		for len(batch) < maxBatch {
			select {
			case msg, ok := <-c.delivered:
				if !ok {
					break fill
				}
				batch = append(batch, msg)
			default:
				break fill
			}
		}
		c.handle(batch)
	}
}

// handle processes a batch of candle messages: each candle continues the
// feed's trace in a span of its own, and the batch's writes and publishes
// run in a span linked to them. It acks each candle after the engine wrote
// and published, naks it (for a retry) when that failed, and terminates a
// message that is not a valid candle.
func (c *candleConsumer) handle(msgs []jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), handleTimeout)
	defer cancel()
	if md, err := msgs[len(msgs)-1].Metadata(); err == nil {
		c.pending.Store(int64(md.NumPending))
	}
	candles := make([]engine.TracedCandle, 0, len(msgs))
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
		candles = append(candles, engine.TracedCandle{Ctx: mctx, Candle: candle})
		acks = append(acks, msg)
		spans = append(spans, span)
		links = append(links, trace.LinkFromContext(mctx))
	}
	if len(candles) == 0 {
		return
	}
	bctx, batchSpan := c.tracer.Start(ctx, "vigil-indicators candle batch", trace.WithLinks(links...),
		trace.WithAttributes(attribute.Int("messaging.batch.message_count", len(candles))))
	errs := c.engine.HandleCandles(bctx, candles)
	failed := 0
	for i, err := range errs {
		tc, msg, span := candles[i], acks[i], spans[i]
		if err != nil {
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
	kind, s, err := contract.ParseSeriesSubject(subject)
	if err != nil {
		return c, fmt.Errorf("%w: %w", ErrCandle, err)
	}
	if kind != "candle" || s.User != c.User || s.ExchangeID != c.ExchangeID || s.Symbol != c.Symbol || s.Timeframe != c.Timeframe {
		return c, fmt.Errorf("%w: series %s does not match subject %s", ErrCandle, c.SeriesID, subject)
	}
	return c, nil
}
