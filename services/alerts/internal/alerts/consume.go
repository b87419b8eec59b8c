package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/telemetry"
)

// ErrBadUpdate reports an indicator update that cannot be evaluated; it is
// terminated, not redelivered.
var ErrBadUpdate = errors.New("alerts: bad indicator update")

// retryDelay is how long an update whose evaluation failed waits before it
// is delivered again.
const retryDelay = time.Second

// createConsumer creates this instance's consumer on VIGIL_INDICATORS:
// ephemeral, named vigil-alerts-<id>, new updates only (a gained user
// catches up from Redis instead), explicit acks.
func (in *instance) createConsumer(ctx context.Context) (jetstream.Consumer, error) {
	name := in.consumerName()
	cons, err := in.rt.JS.CreateOrUpdateConsumer(ctx, contract.StreamIndicators, jetstream.ConsumerConfig{
		Name:              name,
		Description:       "vigil-alerts instance " + in.rt.Instance,
		FilterSubject:     contract.IndicatorSubjects,
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           in.cfg.AckWait,
		MaxDeliver:        -1,
		MaxAckPending:     1000,
		InactiveThreshold: in.cfg.ConsumerInactive,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", name, contract.StreamIndicators, err)
	}
	return cons, nil
}

// consumerName is vigil-alerts-<id>.
func (in *instance) consumerName() string { return contract.ServiceAlerts + "-" + in.svc.ID() }

// route is the consumer's callback: it acknowledges the updates of users
// this instance does not run at once and queues the others on their
// user's worker. An update whose subject is not an indicator subject is
// terminated.
func (in *instance) route(msg jetstream.Msg) {
	kind, series, err := contract.ParseSeriesSubject(msg.Subject())
	if err != nil || kind != "indicator" {
		in.log.Warn("update on a bad subject dropped", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	if !in.monitor.Wants(series.User) {
		_ = msg.Ack()
		return
	}
	in.dispatch.send(series.User, msg)
}

// process evaluates one update on a worker, continuing the trace of the
// message, and acknowledges it once its alerts are recorded; on failure
// it is delivered again after retryDelay.
func (in *instance) process(msg jetstream.Msg) {
	if in.workCtx.Err() != nil {
		return // stopping: left for redelivery
	}
	began := time.Now()
	ctx := telemetry.Extract(in.workCtx, msg.Headers())
	ctx, span := in.tracer.Start(ctx, contract.ServiceAlerts+" evaluate", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.destination.name", msg.Subject()), attribute.String("vigil.instance", in.svc.ID())))
	defer span.End()
	u, err := decodeUpdate(msg)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		in.log.WarnContext(ctx, "bad indicator update dropped", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	span.SetAttributes(attribute.String("vigil.user", u.User), attribute.Int64("vigil.bar_start", u.Start), attribute.Bool("vigil.closed", u.Closed))
	stop := keepInProgress(msg, in.cfg.AckWait/3)
	err = in.monitor.Handle(ctx, u)
	stop()
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		if in.workCtx.Err() == nil {
			in.log.WarnContext(ctx, "evaluation failed, update delivered again", "user", u.User, "series", u.SeriesID.String(), "start", u.Start, "err", err)
			_ = msg.NakWithDelay(retryDelay)
		}
		return
	}
	_ = msg.Ack()
	in.metrics.EvaluationDuration.Record(ctx, float64(time.Since(began).Microseconds())/1000)
}

// decodeUpdate decodes msg and checks that it names the series of its
// subject.
func decodeUpdate(msg jetstream.Msg) (contract.IndicatorUpdate, error) {
	var u contract.IndicatorUpdate
	if err := json.Unmarshal(msg.Data(), &u); err != nil {
		return u, fmt.Errorf("%w: %w", ErrBadUpdate, err)
	}
	_, s, err := contract.ParseSeriesSubject(msg.Subject())
	if err != nil {
		return u, fmt.Errorf("%w: %w", ErrBadUpdate, err)
	}
	if err := u.SeriesID.Validate(); err != nil {
		return u, fmt.Errorf("%w: %w", ErrBadUpdate, err)
	}
	if u.User != s.User || u.ExchangeID != s.ExchangeID || u.Symbol != s.Symbol || u.Timeframe != s.Timeframe {
		return u, fmt.Errorf("%w: series %s does not match the subject", ErrBadUpdate, u.SeriesID)
	}
	return u, nil
}

// keepInProgress tells the server every interval that msg is still being
// worked on, until the returned stop is called, so that a long retry does
// not make it redelivered.
func keepInProgress(msg jetstream.Msg, every time.Duration) (stop func()) {
	var mu sync.Mutex
	stopped := false
	var timer *time.Timer
	timer = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		_ = msg.InProgress()
		timer.Reset(every)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		timer.Stop()
	}
}

// dispatcher runs one worker per shard of users; a user's updates always
// go to the same worker and are processed in order.
type dispatcher struct {
	shards    []chan jetstream.Msg
	process   func(jetstream.Msg)
	stopping  chan struct{}
	closeOnce sync.Once
	done      chan struct{}
}

// newDispatcher starts n workers running process.
func newDispatcher(n int, process func(jetstream.Msg)) *dispatcher {
	d := &dispatcher{process: process, stopping: make(chan struct{}), done: make(chan struct{})}
	var wg sync.WaitGroup
	for range n {
		shard := make(chan jetstream.Msg, 64)
		d.shards = append(d.shards, shard)
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.work(shard)
		}()
	}
	go func() {
		wg.Wait()
		close(d.done)
	}()
	return d
}

// send queues msg on user's worker, waiting while it is full; after close
// the message is left unacknowledged.
func (d *dispatcher) send(user string, msg jetstream.Msg) {
	h := fnv.New32a()
	h.Write([]byte(user))
	select {
	case d.shards[h.Sum32()%uint32(len(d.shards))] <- msg:
	case <-d.stopping:
	}
}

// work processes a shard until close, then what is still queued.
func (d *dispatcher) work(shard <-chan jetstream.Msg) {
	for {
		select {
		case msg := <-shard:
			d.process(msg)
		case <-d.stopping:
			for {
				select {
				case msg := <-shard:
					d.process(msg)
				default:
					return
				}
			}
		}
	}
}

// close stops accepting messages and waits for the workers until ctx ends.
func (d *dispatcher) close(ctx context.Context) error {
	d.closeOnce.Do(func() { close(d.stopping) })
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("alerts: waiting for the updates in progress: %w", ctx.Err())
	}
}
