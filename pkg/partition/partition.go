// Package partition is the service kit's owned consumer of a partitioned
// stream (natsx.Partitioned): each instance of a service receives only the
// messages of the partitions it owns, never the whole stream.
//
// The owner of partition k is the live member that rendezvous hashing
// (pkg/membership) gives the key "p<k>". Each instance has one durable
// consumer (<service>-<instance>, removed by the server once the instance
// is gone) whose FilterSubjects are its partitions (the stream's subjects
// when it owns them all); an ownership change
// updates the filter, so the consumer keeps its position.
//
// Hand-over: a partition is held through a lease in KV VIGIL_PARTITIONS
// (key <service>.<k>, value the holder). An instance that loses a
// partition stops consuming, handles and acks every message it was
// delivered, tells the service (which drops the partition's state) and
// only then deletes the lease. The new owner claims the lease once it is
// free, or once its holder is no longer a live member (dead or cut off),
// takes a new fencing epoch (Options.Fence), adds the partition to its
// filter and then tells the service, which rebuilds the partition's state
// from Redis. A former holder's late writes carry an older epoch and are
// refused by the store.
//
// The lease bucket is checked every second: when it is gone (deleted, or
// lost with a server's store) it is created again and every owner writes
// its leases again, so ownership converges as the membership says.
//
// The consumer hands the messages to the service in batches (whatever
// arrived while the previous batch was handled, up to MaxBatch), recreates
// itself when the server lost it or the connection came back (the
// service then rebuilds everything: messages may have been missed), and
// drains on Stop.
package partition

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"vigil.dev/pkg/natsx"
)

// MeterName is the OpenTelemetry meter of the package's metrics.
const MeterName = "vigil.dev/pkg/partition"

// LeaseBucket is the KV bucket of partition leases (key
// <service>.<partition>, value the holding instance).
const LeaseBucket = "VIGIL_PARTITIONS"

// leaseBucket is the configuration of LeaseBucket.
var leaseBucket = jetstream.KeyValueConfig{
	Bucket:      LeaseBucket,
	Description: "vigil partition leases (key <service>.<partition>, value the holding instance)",
	History:     1,
	Storage:     jetstream.FileStorage,
	Metadata:    natsx.Versioned(1),
}

// Defaults of Options.
const (
	DefaultPullMessages = 256
	DefaultMaxBatch     = 256
	// retryEvery is how often a partition whose lease a live member still
	// holds is tried again.
	retryEvery = 200 * time.Millisecond
	// reconcileEvery is how often ownership is checked without a change.
	reconcileEvery = time.Second
)

// Members is the live membership partitions are assigned from;
// *membership.Group is one.
type Members interface {
	Self() string
	Members() []string
	Changes() <-chan struct{}
}

// Options configure a Consumer.
type Options struct {
	// JS creates the consumer and the lease bucket; NC's reconnects count
	// as a loss (messages may have been missed while disconnected).
	JS jetstream.JetStream
	NC *nats.Conn
	// Stream is the partitioned stream and Count its partition count.
	Stream natsx.Partitioned
	Count  int
	// Service names the leases and the consumer (<Service>-<self>).
	Service string
	Members Members
	// Consumer is the consumer's configuration besides its name and
	// filter (ack wait, max ack pending, inactive threshold, ...).
	Consumer jetstream.ConsumerConfig
	// PullMessages and MaxBatch tune the delivery (defaults when zero).
	PullMessages, MaxBatch int
	// Handle handles a batch: it acks, naks or terminates each message,
	// or hands them to workers that do.
	Handle func(msgs []jetstream.Msg)
	// Settle, when set, waits until every message given to Handle so far
	// is acked or nakked (for a Handle that hands messages to workers).
	Settle func(ctx context.Context) error
	// Changed is called after the owned partitions changed: after lost
	// partitions were drained (before their leases are released) and
	// after gained partitions joined the filter. The service drops and
	// rebuilds its state accordingly before it returns.
	Changed func(ctx context.Context)
	// Lost is called after the consumer was recreated: messages may have
	// been missed, the service rebuilds its state.
	Lost func(ctx context.Context)
	// Fence, when set, is called when a partition is claimed and returns
	// its new fencing epoch (Epoch).
	Fence func(ctx context.Context, partition int) (int64, error)
	Log   *slog.Logger
}

// ErrStopped reports a consumer that was stopped.
var ErrStopped = errors.New("partition: consumer stopped")

// Consumer is an instance's consumer of its partitions of one stream.
type Consumer struct {
	opts   Options
	name   string
	leases jetstream.KeyValue

	delivered chan item
	batched   chan struct{}
	lost      chan struct{}
	// fenced signals partitions dropped by Fenced, for the run loop.
	fenced chan struct{}
	cancel context.CancelFunc
	done   chan struct{}

	// mu guards the owned partitions, read by Owns on every message.
	mu     sync.RWMutex
	owned  map[int]lease
	filter []string

	// bucketChecked is when reconcile last checked that the lease bucket
	// exists, bucketCreated when the bucket this instance's leases are in
	// was created (reconcile's goroutine only).
	bucketChecked, bucketCreated time.Time

	// consumeMu guards the running Consume.
	consumeMu sync.Mutex
	consumer  jetstream.Consumer
	consume   jetstream.ConsumeContext
	stopped   bool

	// recovering is set from a loss until the consumer is recreated;
	// pending is the server's pending count as of the latest Ready.
	recovering atomic.Bool
	pending    atomic.Int64
	// metric reports Pending as vigil.consumer.pending while started.
	metric metric.Registration
}

// item is a delivered message, or a barrier closed once every message
// before it was handled.
type item struct {
	msg     jetstream.Msg
	barrier chan struct{}
}

// New opens the lease bucket and creates the consumer, owning nothing yet:
// Start claims the partitions.
func New(ctx context.Context, opts Options) (*Consumer, error) {
	if opts.JS == nil || opts.NC == nil || opts.Members == nil || opts.Handle == nil || opts.Changed == nil || opts.Log == nil {
		return nil, errors.New("partition: JS, NC, Members, Handle, Changed and Log are required")
	}
	if err := natsx.ValidatePartitions(opts.Count); err != nil {
		return nil, err
	}
	if opts.PullMessages <= 0 {
		opts.PullMessages = DefaultPullMessages
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	leases, err := natsx.EnsureKeyValue(ctx, opts.JS, leaseBucket, natsx.LogTo(opts.Log))
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", LeaseBucket, err)
	}
	c := &Consumer{opts: opts, name: opts.Service + "-" + opts.Members.Self(), leases: leases,
		delivered: make(chan item, opts.MaxBatch), batched: make(chan struct{}), lost: make(chan struct{}, 1),
		fenced: make(chan struct{}, 1),
		done:   make(chan struct{}), owned: map[int]lease{}, filter: []string{opts.Stream.NoPartition()}}
	if c.bucketCreated, err = c.leaseBucketCreated(ctx); err != nil {
		return nil, fmt.Errorf("kv %s: %w", LeaseBucket, err)
	}
	if err := c.create(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Name is the consumer's durable name.
func (c *Consumer) Name() string { return c.name }

// Owns reports whether this instance owns partition k.
func (c *Consumer) Owns(k int) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ok := c.owned[k]
	return ok
}

// OwnsKey reports whether this instance owns the partition of a message
// whose subject has these key tokens (in the order of Stream.Keys).
func (c *Consumer) OwnsKey(keys ...string) bool { return c.Owns(natsx.Of(c.opts.Count, keys...)) }

// PartitionOf is the partition of key tokens (in the order of
// Stream.Keys).
func (c *Consumer) PartitionOf(keys ...string) int { return natsx.Of(c.opts.Count, keys...) }

// Epoch is the fencing epoch of owned partition k (0 when not owned or
// without Options.Fence).
func (c *Consumer) Epoch(k int) int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.owned[k].epoch
}

// Fenced tells the consumer that the store refused a write to partition
// k made under epoch: another instance has claimed k since (this one was
// cut off, or too slow to see a membership change). Unless k was claimed
// again meanwhile (a newer epoch), this instance stops owning k at once
// (Owns is false from here on); the run loop then takes k out of the
// filter and has the service drop its state (Changed), without touching
// the lease, which is no longer this instance's. k is claimed again only
// as any partition is: when the membership gives it to this instance and
// its lease is free or held by a member that is gone. Fenced does not
// block, so a Handle may call it.
func (c *Consumer) Fenced(k int, epoch int64) {
	c.mu.Lock()
	l, ok := c.owned[k]
	if ok && l.epoch == epoch {
		delete(c.owned, k)
	}
	c.mu.Unlock()
	if !ok || l.epoch != epoch {
		return
	}
	c.opts.Log.Warn("partition fenced: another instance took it; dropped", "consumer", c.name, "partition", k, "epoch", epoch)
	select {
	case c.fenced <- struct{}{}:
	default:
	}
}

// dropFenced takes the partitions dropped by Fenced out of the filter and
// has the service drop their state.
func (c *Consumer) dropFenced(ctx context.Context) {
	if err := c.refilter(ctx); err != nil {
		c.opts.Log.Warn("removing fenced partitions from the filter failed", "consumer", c.name, "err", err)
	}
	c.opts.Changed(ctx)
}

// Partitions lists the owned partitions, sorted.
func (c *Consumer) Partitions() []int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]int, 0, len(c.owned))
	for k := range c.owned {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Info is the server's view of the consumer (delivered and pending
// counts).
func (c *Consumer) Info(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	c.consumeMu.Lock()
	cons := c.consumer
	c.consumeMu.Unlock()
	return cons.Info(ctx)
}

// create creates or updates the consumer with the current filter.
func (c *Consumer) create(ctx context.Context) error {
	cfg := c.opts.Consumer
	cfg.Durable = c.name
	c.mu.RLock()
	cfg.FilterSubjects = slices.Clone(c.filter)
	c.mu.RUnlock()
	cfg.FilterSubject = ""
	if cfg.AckPolicy == jetstream.AckNonePolicy {
		cfg.AckPolicy = jetstream.AckExplicitPolicy
	}
	cons, err := c.opts.JS.CreateOrUpdateConsumer(ctx, c.opts.Stream.Stream, cfg)
	if err != nil {
		return fmt.Errorf("consumer %s on %s: %w", c.name, c.opts.Stream.Stream, err)
	}
	c.consumeMu.Lock()
	c.consumer = cons
	c.consumeMu.Unlock()
	return nil
}

// Claim takes the partitions the membership gives this instance, as far
// as their leases are free, and adds them to the filter (calling
// Changed), without consuming yet: the server keeps their messages from
// here on. A service claims, then reads its state, then starts.
func (c *Consumer) Claim(ctx context.Context) { c.reconcile(ctx) }

// Start starts consuming, claims what Claim could not, and follows the
// membership until Stop.
func (c *Consumer) Start(ctx context.Context) error {
	if err := c.consumeOnce(); err != nil {
		return err
	}
	go c.handleBatches()
	c.reconcile(ctx)
	reconnected := c.opts.NC.Opts.ReconnectedCB
	c.opts.NC.SetReconnectHandler(func(nc *nats.Conn) {
		if reconnected != nil {
			reconnected(nc)
		}
		c.signalLost()
	})
	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.run(runCtx)
	return c.registerMetric()
}

// registerMetric reports Pending as the gauge vigil.consumer.pending
// (attributes stream and consumer), the consumer lag of the dashboards.
func (c *Consumer) registerMetric() error {
	meter := otel.Meter(MeterName)
	gauge, err := meter.Int64ObservableGauge("vigil.consumer.pending", metric.WithUnit("{message}"),
		metric.WithDescription("messages of the instance's partitions not yet delivered or not yet acked (as of the latest readiness check)"))
	if err != nil {
		return fmt.Errorf("partition: metric: %w", err)
	}
	attrs := metric.WithAttributes(attribute.String("stream", c.opts.Stream.Stream), attribute.String("consumer", c.name))
	c.metric, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(gauge, c.Pending(), attrs)
		return nil
	}, gauge)
	if err != nil {
		return fmt.Errorf("partition: metric: %w", err)
	}
	return nil
}

// unregisterMetric stops reporting the gauge.
func (c *Consumer) unregisterMetric() {
	if c.metric != nil {
		_ = c.metric.Unregister()
	}
}

func (c *Consumer) signalLost() {
	c.recovering.Store(true)
	select {
	case c.lost <- struct{}{}:
	default:
	}
}

// consumeOnce starts one Consume on the current consumer.
func (c *Consumer) consumeOnce() error {
	c.consumeMu.Lock()
	defer c.consumeMu.Unlock()
	if c.stopped {
		return ErrStopped
	}
	cc, err := c.consumer.Consume(func(msg jetstream.Msg) { c.delivered <- item{msg: msg} },
		jetstream.PullMaxMessages(c.opts.PullMessages),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				c.signalLost()
			}
			c.opts.Log.Warn("partitioned consumer", "consumer", c.name, "err", err)
		}))
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.name, err)
	}
	c.consume = cc
	return nil
}

// run reconciles on membership changes and every reconcileEvery (more
// often while a partition waits for its lease), and recovers a lost
// consumer, until ctx ends.
func (c *Consumer) run(ctx context.Context) {
	defer close(c.done)
	changes := c.opts.Members.Changes()
	timer := time.NewTimer(reconcileEvery)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.lost:
			c.recover(ctx)
		case <-c.fenced:
			c.dropFenced(ctx)
		case <-changes:
		case <-timer.C:
		}
		wait := reconcileEvery
		if !c.reconcile(ctx) {
			wait = retryEvery
		}
		timer.Reset(wait)
	}
}

// drain stops the running Consume after the messages it was delivered
// and waits until they are handled (and, with Settle, acked).
func (c *Consumer) drain(ctx context.Context) error {
	c.consumeMu.Lock()
	cc := c.consume
	c.consumeMu.Unlock()
	if cc != nil {
		cc.Drain()
		select {
		case <-cc.Closed():
		case <-ctx.Done():
			cc.Stop()
			return ctx.Err()
		}
	}
	barrier := make(chan struct{})
	c.delivered <- item{barrier: barrier}
	select {
	case <-barrier:
	case <-ctx.Done():
		return ctx.Err()
	}
	if c.opts.Settle != nil {
		return c.opts.Settle(ctx)
	}
	return nil
}

// refilter updates the consumer's filter to the owned partitions.
func (c *Consumer) refilter(ctx context.Context) error {
	c.mu.Lock()
	filter := make([]string, 0, len(c.owned))
	for k := range c.owned {
		filter = append(filter, c.opts.Stream.Filter(k))
	}
	switch len(filter) {
	case 0:
		filter = append(filter, c.opts.Stream.NoPartition())
	case c.opts.Count:
		// One filter for the whole stream: the server delivers far
		// faster than through one filter per partition (natsx All).
		filter = []string{c.opts.Stream.All()}
	}
	slices.Sort(filter)
	c.filter = filter
	c.mu.Unlock()
	return c.create(ctx)
}

// recover recreates a lost consumer and has the service rebuild.
func (c *Consumer) recover(ctx context.Context) {
	c.opts.Log.Warn("messages may have been missed; recreating the consumer", "consumer", c.name)
	c.consumeMu.Lock()
	if c.consume != nil {
		c.consume.Stop()
	}
	c.consumeMu.Unlock()
	for {
		err := c.create(ctx)
		if err == nil {
			err = c.consumeOnce()
		}
		if err == nil {
			break
		}
		if errors.Is(err, ErrStopped) {
			return
		}
		c.opts.Log.Error("recreating the consumer failed", "consumer", c.name, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	c.recovering.Store(false)
	if c.opts.Lost != nil {
		c.opts.Lost(ctx)
	}
}

// Ready is the consumer's readiness check (pkg/health): nil while it
// consumes and the server has it, an error naming the cause while it is
// not started, stopped, lost and being recreated, or unknown to the
// server. It also takes the consumer's lag (Pending) from the server.
func (c *Consumer) Ready(ctx context.Context) error {
	c.consumeMu.Lock()
	stopped, consuming, cons := c.stopped, c.consume != nil, c.consumer
	c.consumeMu.Unlock()
	switch {
	case stopped:
		return fmt.Errorf("consumer %s: %w", c.name, ErrStopped)
	case !consuming:
		return fmt.Errorf("consumer %s is not consuming yet", c.name)
	case c.recovering.Load():
		return fmt.Errorf("consumer %s was lost and is being recreated", c.name)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("consumer %s on %s: %w", c.name, c.opts.Stream.Stream, err)
	}
	c.pending.Store(int64(info.NumPending) + int64(info.NumAckPending))
	return nil
}

// Pending is the consumer's lag as of the latest Ready: messages of its
// partitions not yet delivered plus those delivered and not yet acked.
func (c *Consumer) Pending() int64 { return c.pending.Load() }

// handleBatches hands the delivered messages to Handle in batches until
// Stop: each batch is the message that arrived first and those that
// arrived while the previous batch was handled, up to MaxBatch.
func (c *Consumer) handleBatches() {
	defer close(c.batched)
	batch := make([]jetstream.Msg, 0, c.opts.MaxBatch)
	for it := range c.delivered {
		if it.barrier != nil {
			close(it.barrier)
			continue
		}
		batch = append(batch[:0], it.msg)
		var barrier chan struct{}
	fill:
		for len(batch) < c.opts.MaxBatch {
			select {
			case next, ok := <-c.delivered:
				if !ok {
					break fill
				}
				if next.barrier != nil {
					barrier = next.barrier
					break fill
				}
				batch = append(batch, next.msg)
			default:
				break fill
			}
		}
		c.opts.Handle(batch)
		if barrier != nil {
			close(barrier)
		}
	}
}

// Stop stops consuming after the delivered messages are handled, releases
// the leases so the other members take the partitions at once, and
// deletes the consumer.
func (c *Consumer) Stop(ctx context.Context) error {
	c.consumeMu.Lock()
	c.stopped = true
	c.consumeMu.Unlock()
	if c.cancel == nil { // never started
		return c.deleteConsumer(ctx)
	}
	c.unregisterMetric()
	c.cancel()
	<-c.done
	err := c.drain(ctx)
	close(c.delivered)
	select {
	case <-c.batched:
	case <-ctx.Done():
		err = errors.Join(err, ctx.Err())
	}
	c.mu.Lock()
	held := c.owned
	c.owned = map[int]lease{}
	c.mu.Unlock()
	for k, l := range held {
		_ = c.leases.Delete(ctx, c.key(k), jetstream.LastRevision(l.revision))
	}
	return errors.Join(err, c.deleteConsumer(ctx))
}

// Abandon stops consuming at once, as a crashed process would: nothing
// delivered is handled any more, no lease is released and the consumer
// is left for the server to remove. For tests of failover.
func (c *Consumer) Abandon() {
	c.consumeMu.Lock()
	c.stopped = true
	if c.consume != nil {
		c.consume.Stop()
	}
	c.consumeMu.Unlock()
	if c.cancel != nil {
		c.unregisterMetric()
		c.cancel()
		<-c.done
	}
}

// deleteConsumer removes the consumer from the stream.
func (c *Consumer) deleteConsumer(ctx context.Context) error {
	err := c.opts.JS.DeleteConsumer(ctx, c.opts.Stream.Stream, c.name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	return err
}
