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
	// handleTimeout bounds the Redis and NATS work of one candle.
	handleTimeout = 20 * time.Second
	// retryDelay is how long a failed candle waits before redelivery.
	retryDelay = time.Second
)

// ErrCandle reports a candle message that is not a valid contract.Candle
// for its subject.
var ErrCandle = errors.New("bad candle message")

// candleConsumer is this instance's consumer of VIGIL_CANDLES (named
// vigil-indicators-<instance>, ephemeral): it sees every candle, hands it
// to the engine, which ignores the series this instance does not run, and
// acks after the engine's writes.
type candleConsumer struct {
	rt     *service.Runtime
	engine *engine.Engine
	name   string
	tracer trace.Tracer
	// pending is the number of candles waiting behind the last one
	// delivered, reported as the consumer lag gauge.
	pending atomic.Int64

	mu       sync.Mutex
	consumer jetstream.Consumer
	consume  jetstream.ConsumeContext
	// lost is signalled when the consumer disappeared or the connection
	// was re-established: candles may have been missed.
	lost chan struct{}
}

func newCandleConsumer(ctx context.Context, rt *service.Runtime, e *engine.Engine, instance string) (*candleConsumer, error) {
	c := &candleConsumer{rt: rt, engine: e, name: contract.ServiceIndicators + "-" + instance,
		tracer: otel.Tracer(engine.MeterName), lost: make(chan struct{}, 1)}
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
	cons, err := c.rt.JS.CreateOrUpdateConsumer(ctx, contract.StreamCandles, jetstream.ConsumerConfig{
		Name:              c.name,
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
	cc, err := c.consumer.Consume(c.handle, jetstream.PullMaxMessages(256),
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

// stop drains the consumer: the candle in flight is finished and acked.
func (c *candleConsumer) stop(ctx context.Context) error {
	c.mu.Lock()
	cc := c.consume
	c.mu.Unlock()
	cc.Drain()
	select {
	case <-cc.Closed():
		return nil
	case <-ctx.Done():
		cc.Stop()
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

// handle processes one candle message: it continues the feed's trace,
// and acks after the engine wrote and published, naks (for a retry) when
// that failed, and terminates a message that is not a valid candle.
func (c *candleConsumer) handle(msg jetstream.Msg) {
	ctx := telemetry.Extract(context.Background(), nats.Header(msg.Headers()))
	ctx, span := c.tracer.Start(ctx, "vigil-indicators candle", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.destination.name", msg.Subject())))
	defer span.End()
	if md, err := msg.Metadata(); err == nil {
		c.pending.Store(int64(md.NumPending))
	}
	candle, err := decodeCandle(msg.Subject(), msg.Data())
	if err != nil {
		c.rt.Log.WarnContext(ctx, "candle message dropped", "subject", msg.Subject(), "err", err)
		span.SetStatus(codes.Error, err.Error())
		_ = msg.Term()
		return
	}
	ctx, cancel := context.WithTimeout(ctx, handleTimeout)
	defer cancel()
	if err := c.engine.HandleCandle(ctx, candle); err != nil {
		c.rt.Log.ErrorContext(ctx, "candle failed; retrying", "series", candle.SeriesID.String(), "start", candle.Start, "err", err)
		span.SetStatus(codes.Error, err.Error())
		_ = msg.NakWithDelay(retryDelay)
		return
	}
	if err := msg.Ack(); err != nil {
		c.rt.Log.WarnContext(ctx, "candle ack failed", "subject", msg.Subject(), "err", err)
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
	kind, s, err := contract.ParseSeriesSubject(subject)
	if err != nil {
		return c, fmt.Errorf("%w: %w", ErrCandle, err)
	}
	if kind != "candle" || s.User != c.User || s.ExchangeID != c.ExchangeID || s.Symbol != c.Symbol || s.Timeframe != c.Timeframe {
		return c, fmt.Errorf("%w: series %s does not match subject %s", ErrCandle, c.SeriesID, subject)
	}
	return c, nil
}
