package daemon

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	json "github.com/goccy/go-json"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/partition"
	"vigil.dev/pkg/telemetry"
	"vigil.dev/services/alerts/internal/monitor"
)

// ErrBadUpdate reports an indicator update that cannot be evaluated; it is
// terminated, not redelivered.
var ErrBadUpdate = errors.New("alerts: bad indicator update")

// retryDelay is how long an update whose evaluation failed waits before it
// is delivered again.
const retryDelay = time.Second

// newConsumer creates this instance's consumer of its partitions of
// VIGIL_INDICATORS (pkg/partition, partitioned by user): durable
// vigil-alerts-<id>, so that the server replicates it like the stream (an
// ephemeral one lives on one server and is lost with it), removed once the
// instance is inactive; new updates only (a gained user catches up from
// Redis instead), explicit acks. It owns nothing until started.
func (in *instance) newConsumer(ctx context.Context, members partition.Members) (*partition.Consumer, error) {
	return partition.New(ctx, partition.Options{
		JS: in.rt.JS, NC: in.rt.NC, Stream: natsx.IndicatorPartitions, Count: in.cfg.PartitionCount(),
		Service: contract.ServiceAlerts, Members: members,
		Consumer: jetstream.ConsumerConfig{
			Description:       "vigil-alerts instance " + in.rt.Instance + ": the updates of the partitions it owns",
			DeliverPolicy:     jetstream.DeliverNewPolicy,
			AckPolicy:         jetstream.AckExplicitPolicy,
			AckWait:           in.cfg.AckWait,
			MaxDeliver:        -1,
			MaxAckPending:     1000,
			InactiveThreshold: in.cfg.ConsumerInactive,
		},
		Handle:  in.routeAll,
		Settle:  func(ctx context.Context) error { return in.dispatch.settle(ctx) },
		Changed: in.reconcile,
		Lost:    in.reconcile,
		Log:     in.log,
	})
}

// consumerName is vigil-alerts-<id>.
func (in *instance) consumerName() string { return contract.ServiceAlerts + "-" + in.svc.ID() }

// userOwnership tells the monitor which users this instance owns: those
// of its partitions.
type userOwnership struct{ in *instance }

// Owns reports whether the partition of user is this instance's.
func (o userOwnership) Owns(user string) bool {
	return o.in.consumer != nil && o.in.consumer.OwnsKey(user)
}

// routeAll routes a batch of updates.
func (in *instance) routeAll(msgs []jetstream.Msg) {
	for _, msg := range msgs {
		in.route(msg)
	}
}

// route is the consumer's callback: it acknowledges the updates of users
// this instance does not run at once and queues the others on their
// user's worker. An update whose subject is not an indicator subject is
// terminated.
func (in *instance) route(msg jetstream.Msg) {
	published, _ := natsx.Published(msg.Subject())
	kind, series, err := contract.ParseSeriesSubject(published)
	if err != nil || kind != "indicator" {
		in.log.Warn("update on a bad subject dropped", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	if !in.monitor.Wants(series.User) {
		_ = msg.Ack()
		return
	}
	in.dispatch.send(delivery{msg: msg, series: series})
}

// delivery is an update as the consumer delivered it and the series its
// subject names.
type delivery struct {
	msg    jetstream.Msg
	series contract.SeriesID
}

// process evaluates a batch of updates on a worker in one span that links
// the updates' trace contexts, and acknowledges each update once its
// alerts are recorded; an update whose evaluation failed is delivered
// again after retryDelay.
func (in *instance) process(batch []delivery) {
	if in.workCtx.Err() != nil {
		return // stopping: left for redelivery
	}
	began := time.Now()
	updates := make([]monitor.Update, 0, len(batch))
	good := make([]jetstream.Msg, 0, len(batch))
	links := make([]trace.Link, 0, len(batch))
	for _, d := range batch {
		msg := d.msg
		u, err := decodeUpdate(d.series, msg.Data())
		if err != nil {
			in.log.WarnContext(in.workCtx, "bad indicator update dropped", "subject", msg.Subject(), "err", err)
			_ = msg.Term()
			continue
		}
		sc := trace.SpanContextFromContext(telemetry.Extract(in.workCtx, msg.Headers()))
		updates = append(updates, monitor.Update{IndicatorUpdate: u, Trace: sc})
		good = append(good, msg)
		if sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	if len(good) == 0 {
		return
	}
	ctx, span := in.tracer.Start(in.workCtx, contract.ServiceAlerts+" evaluate", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithLinks(links...), trace.WithAttributes(attribute.String("messaging.destination.name", contract.StreamIndicators),
			attribute.Int("messaging.batch.message_count", len(good)), attribute.String("vigil.instance", in.svc.ID())))
	defer span.End()
	stop := keepInProgress(good, in.cfg.AckWait/3)
	errs := in.monitor.Handle(ctx, updates...)
	stop()
	failed := 0
	for i, msg := range good {
		if errs != nil && errs[i] != nil {
			failed++
			if in.workCtx.Err() == nil {
				u := updates[i]
				in.log.WarnContext(ctx, "evaluation failed, update delivered again", "user", u.User, "series", u.SeriesID.String(), "start", u.Start, "err", errs[i])
				_ = msg.NakWithDelay(retryDelay)
			}
			continue
		}
		_ = msg.Ack()
	}
	if failed > 0 {
		span.SetStatus(codes.Error, fmt.Sprintf("%d of %d updates delivered again", failed, len(good)))
		return
	}
	in.metrics.EvaluationDuration.Record(ctx, float64(time.Since(began).Microseconds())/1000)
}

// decodeUpdate decodes data, an update on the subject of series s, and
// checks that it names s.
func decodeUpdate(s contract.SeriesID, data []byte) (contract.IndicatorUpdate, error) {
	var u contract.IndicatorUpdate
	if err := json.Unmarshal(data, &u); err != nil {
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

// keepInProgress tells the server every interval that msgs are still
// being worked on, until the returned stop is called, so that a long retry
// does not make them redelivered.
func keepInProgress(msgs []jetstream.Msg, every time.Duration) (stop func()) {
	var mu sync.Mutex
	stopped := false
	var timer *time.Timer
	timer = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		for _, msg := range msgs {
			_ = msg.InProgress()
		}
		timer.Reset(every)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		timer.Stop()
	}
}

// maxBatch is the most updates a worker evaluates together.
const maxBatch = 256

// dispatcher runs one worker per shard of users; a user's updates always
// go to the same worker and are processed in order. A worker takes what
// its shard holds, up to maxBatch updates, as one batch.
type dispatcher struct {
	// inflight counts the updates sent and not processed yet; idle
	// waiters are told when it drops to zero.
	mu        sync.Mutex
	inflight  int
	idle      []chan struct{}
	shards    []chan delivery
	process   func([]delivery)
	stopping  chan struct{}
	closeOnce sync.Once
	done      chan struct{}
}

// newDispatcher starts n workers running process.
func newDispatcher(n int, process func([]delivery)) *dispatcher {
	d := &dispatcher{process: process, stopping: make(chan struct{}), done: make(chan struct{})}
	var wg sync.WaitGroup
	for range n {
		shard := make(chan delivery, maxBatch)
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

// send queues an update on its user's worker, waiting while it is full;
// after close the message is left unacknowledged.
func (d *dispatcher) send(u delivery) {
	h := fnv.New32a()
	h.Write([]byte(u.series.User))
	d.count(1)
	select {
	case d.shards[h.Sum32()%uint32(len(d.shards))] <- u:
	case <-d.stopping:
		d.count(-1)
	}
}

// count adds n to the updates in flight and wakes the idle waiters when
// none is left.
func (d *dispatcher) count(n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inflight += n
	if d.inflight == 0 {
		for _, ch := range d.idle {
			close(ch)
		}
		d.idle = nil
	}
}

// run processes a batch and counts it done.
func (d *dispatcher) run(batch []delivery) {
	defer d.count(-len(batch))
	d.process(batch)
}

// settle waits until every update sent so far is processed, or ctx ends.
func (d *dispatcher) settle(ctx context.Context) error {
	done := make(chan struct{})
	d.mu.Lock()
	if d.inflight == 0 {
		close(done)
	} else {
		d.idle = append(d.idle, done)
	}
	d.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("alerts: waiting for the updates in progress: %w", ctx.Err())
	}
}

// work processes a shard in batches until close, then what is still
// queued.
func (d *dispatcher) work(shard <-chan delivery) {
	for {
		select {
		case u := <-shard:
			d.run(takeQueued(shard, []delivery{u}))
		case <-d.stopping:
			for {
				batch := takeQueued(shard, nil)
				if len(batch) == 0 {
					return
				}
				d.run(batch)
			}
		}
	}
}

// takeQueued appends to batch the updates queued on shard, without
// waiting, until it holds maxBatch.
func takeQueued(shard <-chan delivery, batch []delivery) []delivery {
	for len(batch) < maxBatch {
		select {
		case u := <-shard:
			batch = append(batch, u)
		default:
			return batch
		}
	}
	return batch
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
