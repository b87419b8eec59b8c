package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/telemetry"
	"vigil.dev/pkg/wait"
	"vigil.dev/services/alerts/internal/metrics"
)

// ConsumerPrefix starts the name of every webhook consumer of
// VIGIL_ALERTS: vigil-webhook-<user>.
const ConsumerPrefix = "vigil-webhook-"

// ConsumerName is the durable consumer of user's webhook.
func ConsumerName(user string) string { return ConsumerPrefix + user }

// startSkew is how far before the desired state's time a new consumer
// starts, for clocks of different servers.
const startSkew = time.Minute

// Reasons a notification is given up, the "reason" attribute of
// vigil.alerts.webhook.failures.
const (
	// ReasonExpired: the alert was older than MaxAge and still not
	// delivered.
	ReasonExpired = "expired"
	// ReasonUndecodable: the stream held something that is not an alert.
	ReasonUndecodable = "undecodable"
)

// ErrInvalidOptions reports unusable Options.
var ErrInvalidOptions = errors.New("webhook: invalid options")

// Options configure a Deliverer. Zero values take the defaults in
// brackets.
type Options struct {
	// Timeout bounds one attempt [5s].
	Timeout time.Duration
	// InitialBackoff is the wait after the first failure [500ms]; it
	// doubles, with jitter, up to MaxBackoff [30s].
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// MaxAge is how long an alert is retried, from when the stream stored
	// it [6h]; then it is given up, logged and counted.
	MaxAge time.Duration
	// AckWait is how long an alert in hand of an instance that died stays
	// with it before the next owner gets it [30s]. It applies to consumers
	// created from now on.
	AckWait time.Duration
	// Client sends the requests [a new http.Client].
	Client *http.Client
	// LookupEnv reads a secret variable [os.LookupEnv].
	LookupEnv func(string) (string, bool)
	// Log receives failures and notifications given up [slog.Default()].
	Log *slog.Logger
	// Metrics counts deliveries and failures [the global meter provider].
	Metrics *metrics.Metrics
	// Now is the clock of MaxAge and status [time.Now].
	Now func() time.Time
	// PendingRefresh is how often the backlog gauge
	// (vigil.alerts.webhook.pending) asks the server for each user's
	// consumer info [10s]; a scrape reads the latest answers.
	PendingRefresh time.Duration
}

func (o *Options) setDefaults() error {
	defaults := []struct {
		v *time.Duration
		d time.Duration
	}{{&o.Timeout, 5 * time.Second}, {&o.InitialBackoff, 500 * time.Millisecond}, {&o.MaxBackoff, 30 * time.Second},
		{&o.MaxAge, 6 * time.Hour}, {&o.AckWait, 30 * time.Second}, {&o.PendingRefresh, 10 * time.Second}}
	for _, f := range defaults {
		if *f.v == 0 {
			*f.v = f.d
		}
	}
	switch {
	case o.Timeout < 0 || o.MaxAge < 0 || o.AckWait < 0:
		return fmt.Errorf("%w: timeout %s, max age %s and ack wait %s must be positive", ErrInvalidOptions, o.Timeout, o.MaxAge, o.AckWait)
	case o.PendingRefresh < 0:
		return fmt.Errorf("%w: pending refresh %s must be positive", ErrInvalidOptions, o.PendingRefresh)
	case o.InitialBackoff < 0 || o.MaxBackoff < o.InitialBackoff:
		return fmt.Errorf("%w: backoff %s..%s must be positive and increasing", ErrInvalidOptions, o.InitialBackoff, o.MaxBackoff)
	}
	if o.Client == nil {
		o.Client = &http.Client{}
	}
	if o.LookupEnv == nil {
		o.LookupEnv = os.LookupEnv
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Metrics == nil {
		m, err := metrics.New(nil)
		if err != nil {
			return fmt.Errorf("%w: metrics: %w", ErrInvalidOptions, err)
		}
		o.Metrics = m
	}
	return nil
}

// Target is a user's webhook as the user's desired state gives it.
type Target struct {
	Hook contract.WebhookSettings
	// Since is when the desired state naming Hook was written; a new
	// consumer starts there.
	Since time.Time
}

// Status is one user's webhook delivery as the status verb shows it.
type Status = contract.WebhookStatus

// Deliverer runs the webhook deliveries of the users Sync gives it.
type Deliverer struct {
	js   jetstream.JetStream
	opts Options

	mu      sync.Mutex
	closed  bool
	targets map[string]*target
	// pending is each user's backlog as of the latest refresh.
	pending map[string]int64

	// stopRefresh ends refreshPending; refreshed is closed once it has.
	stopRefresh context.CancelFunc
	refreshed   chan struct{}
	gauge       metric.Registration
}

// target is one user's delivery loop.
type target struct {
	user string
	// hook is the webhook the next attempt uses.
	hook   contract.WebhookSettings
	cancel context.CancelFunc
	done   chan struct{}
	status Status
}

// New checks opts and returns a deliverer without users. Until Close it
// reports each of its users' backlog as vigil.alerts.webhook.pending.
func New(js jetstream.JetStream, opts Options) (*Deliverer, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	d := &Deliverer{js: js, opts: opts, targets: map[string]*target{}, pending: map[string]int64{}, refreshed: make(chan struct{})}
	gauge, err := opts.Metrics.ObserveWebhookPending(d.backlog)
	if err != nil {
		return nil, fmt.Errorf("webhook: metric: %w", err)
	}
	d.gauge = gauge
	ctx, cancel := context.WithCancel(context.Background())
	d.stopRefresh = cancel
	go d.refreshPending(ctx)
	return d, nil
}

// backlog is the gauge's value: every user this deliverer runs, with the
// notifications queued as of the latest refresh (0 before the first).
func (d *Deliverer) backlog() map[string]int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]int64, len(d.targets))
	for user := range d.targets {
		out[user] = d.pending[user]
	}
	return out
}

// refreshPending asks the server every PendingRefresh for the backlog of
// each user's consumer (NumPending + NumAckPending: queued, and in hand
// not yet delivered) until ctx ends.
func (d *Deliverer) refreshPending(ctx context.Context) {
	defer close(d.refreshed)
	tick := time.NewTicker(d.opts.PendingRefresh)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pending := map[string]int64{}
		for _, user := range d.Users() {
			reqCtx, cancel := context.WithTimeout(ctx, d.opts.PendingRefresh)
			cons, err := d.js.Consumer(reqCtx, contract.StreamAlerts, ConsumerName(user))
			cancel()
			if err == nil {
				info := cons.CachedInfo()
				pending[user] = int64(info.NumPending) + int64(info.NumAckPending)
			} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
				// Keep the last known value rather than report 0.
				d.mu.Lock()
				pending[user] = d.pending[user]
				d.mu.Unlock()
			}
		}
		d.mu.Lock()
		d.pending = pending
		d.mu.Unlock()
	}
}

// Sync makes the deliverer run exactly the users of want (the owned users
// with a webhook): it starts the missing ones, lets the others go (their
// alert in hand goes back to the stream) and updates changed webhooks.
// For each user of removed (users owned here whose webhook is gone) it
// deletes the consumer, dropping what was not delivered with a log line.
func (d *Deliverer) Sync(ctx context.Context, want map[string]Target, removed []string) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	var stopping []*target
	for user, t := range d.targets {
		if _, ok := want[user]; !ok {
			stopping = append(stopping, t)
			delete(d.targets, user)
		}
	}
	for user, w := range want {
		if t, ok := d.targets[user]; ok {
			t.hook = w.Hook
			t.status.Host = hostOf(w.Hook.URL)
			continue
		}
		loopCtx, cancel := context.WithCancel(context.Background())
		t := &target{user: user, hook: w.Hook, cancel: cancel, done: make(chan struct{}), status: Status{Host: hostOf(w.Hook.URL)}}
		d.targets[user] = t
		go d.run(loopCtx, t, w.Since)
	}
	d.mu.Unlock()
	for _, t := range stopping {
		t.cancel()
		<-t.done
	}
	for _, user := range removed {
		d.remove(ctx, user)
	}
}

// remove deletes user's consumer, if any, logging what it held.
func (d *Deliverer) remove(ctx context.Context, user string) {
	cons, err := d.js.Consumer(ctx, contract.StreamAlerts, ConsumerName(user))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return
	}
	pending := int64(-1)
	if err == nil {
		pending = int64(cons.CachedInfo().NumPending) + int64(cons.CachedInfo().NumAckPending)
	}
	if err := d.js.DeleteConsumer(ctx, contract.StreamAlerts, ConsumerName(user)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		d.opts.Log.WarnContext(ctx, "deleting the consumer of a removed webhook failed, retried later", "user", user, "err", err)
		return
	}
	d.opts.Log.InfoContext(ctx, "webhook removed: its consumer is deleted and undelivered alerts are dropped", "user", user, "dropped", pending)
}

// Close stops every delivery; the alerts in hand go back to the stream.
func (d *Deliverer) Close() {
	d.mu.Lock()
	wasClosed := d.closed
	d.closed = true
	targets := slices.Collect(maps.Values(d.targets))
	d.targets = map[string]*target{}
	d.mu.Unlock()
	for _, t := range targets {
		t.cancel()
		<-t.done
	}
	if !wasClosed {
		d.stopRefresh()
		<-d.refreshed
		_ = d.gauge.Unregister()
	}
}

// Users are the users whose webhooks this deliverer runs.
func (d *Deliverer) Users() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Sorted(maps.Keys(d.targets))
}

// Status is the delivery status of every user this deliverer runs. It asks
// the server for each user's backlog within ctx.
func (d *Deliverer) Status(ctx context.Context) map[string]Status {
	d.mu.Lock()
	out := make(map[string]Status, len(d.targets))
	for user, t := range d.targets {
		out[user] = t.status
	}
	d.mu.Unlock()
	for user, s := range out {
		s.Pending = -1
		if cons, err := d.js.Consumer(ctx, contract.StreamAlerts, ConsumerName(user)); err == nil {
			info := cons.CachedInfo()
			s.Pending = int64(info.NumPending) + int64(info.NumAckPending)
		}
		out[user] = s
	}
	return out
}

// update changes t's status under the deliverer's lock.
func (d *Deliverer) update(t *target, change func(*Status)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	change(&t.status)
}

// hookOf is the webhook t's next attempt uses.
func (d *Deliverer) hookOf(t *target) contract.WebhookSettings {
	d.mu.Lock()
	defer d.mu.Unlock()
	return t.hook
}

// run delivers t's alerts until ctx ends.
func (d *Deliverer) run(ctx context.Context, t *target, since time.Time) {
	defer close(t.done)
	defer d.setFailing(t, false, nil)
	for ctx.Err() == nil {
		cons, err := d.consumer(ctx, t.user, since)
		if err != nil {
			if ctx.Err() == nil {
				d.opts.Log.WarnContext(ctx, "opening the webhook consumer failed, retrying", "user", t.user, "err", err)
				wait.Sleep(ctx, d.opts.MaxBackoff)
			}
			continue
		}
		d.consume(ctx, t, cons)
	}
}

// consumer opens user's consumer, creating it to start at since.
func (d *Deliverer) consumer(ctx context.Context, user string, since time.Time) (jetstream.Consumer, error) {
	cons, err := d.js.Consumer(ctx, contract.StreamAlerts, ConsumerName(user))
	if err == nil || !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return cons, err
	}
	start := since.Add(-startSkew)
	if since.IsZero() {
		start = d.opts.Now().Add(-startSkew)
	}
	cons, err = d.js.CreateConsumer(ctx, contract.StreamAlerts, jetstream.ConsumerConfig{
		Durable:       ConsumerName(user),
		Description:   "vigil-alerts: webhook deliveries of " + user,
		FilterSubject: contract.AlertSubject(user, ">"),
		DeliverPolicy: jetstream.DeliverByStartTimePolicy,
		OptStartTime:  &start,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       d.opts.AckWait,
		MaxAckPending: 1,
		MaxDeliver:    -1,
	})
	if errors.Is(err, jetstream.ErrConsumerExists) {
		return d.js.Consumer(ctx, contract.StreamAlerts, ConsumerName(user))
	}
	if err == nil {
		d.opts.Log.InfoContext(ctx, "webhook consumer created", "user", user, "start", start)
	}
	return cons, err
}

// consume delivers what cons hands out until ctx ends or reading fails.
func (d *Deliverer) consume(ctx context.Context, t *target, cons jetstream.Consumer) {
	for ctx.Err() == nil {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		switch {
		case err == nil:
			d.deliver(ctx, t, msg)
		case ctx.Err() != nil || errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages):
		default:
			d.opts.Log.WarnContext(ctx, "reading webhook alerts failed", "user", t.user, "err", err)
			wait.Sleep(ctx, d.opts.InitialBackoff)
			return
		}
	}
}

// deliver sends one alert until it is delivered, too old, or ctx ends
// (then it goes back to the stream at once).
func (d *Deliverer) deliver(ctx context.Context, t *target, msg jetstream.Msg) {
	var a contract.Alert
	if err := json.Unmarshal(msg.Data(), &a); err != nil || a.ID == "" {
		d.giveUp(ctx, t, msg, "", ReasonUndecodable, fmt.Errorf("not an alert: %v", err))
		return
	}
	stored := d.opts.Now()
	if meta, err := msg.Metadata(); err == nil {
		stored = meta.Timestamp
	}
	traced := telemetry.Extract(ctx, msg.Headers())
	stop := keepInProgress(msg, d.opts.AckWait/3)
	defer stop()
	exp := backoff.NewExponentialBackOff()
	exp.InitialInterval, exp.MaxInterval = d.opts.InitialBackoff, d.opts.MaxBackoff
	exp.Reset()
	for attempt := 1; ; attempt++ {
		err := d.post(traced, d.hookOf(t), a.ID, msg.Data())
		if err == nil {
			d.delivered(ctx, t, msg)
			return
		}
		if ctx.Err() != nil {
			_ = msg.Nak()
			return
		}
		d.failed(ctx, t, a.ID, attempt, err)
		if age := d.opts.Now().Sub(stored); age >= d.opts.MaxAge {
			d.giveUp(ctx, t, msg, a.ID, ReasonExpired, fmt.Errorf("undelivered after %d attempts over %s (max age %s): %w",
				attempt, age.Round(time.Second), d.opts.MaxAge, err))
			return
		}
		pause := min(exp.NextBackOff(), max(stored.Add(d.opts.MaxAge).Sub(d.opts.Now()), 0))
		if !wait.Sleep(ctx, pause) {
			_ = msg.Nak()
			return
		}
	}
}

// delivered acknowledges a delivered alert and counts it.
func (d *Deliverer) delivered(ctx context.Context, t *target, msg jetstream.Msg) {
	if err := msg.DoubleAck(ctx); err != nil {
		// Delivered again later: the receiver drops the repeat by its id.
		d.opts.Log.WarnContext(ctx, "acknowledging a delivered webhook alert failed", "user", t.user, "err", err)
	}
	d.opts.Metrics.WebhookDelivered.Add(ctx, 1)
	now := d.opts.Now()
	d.update(t, func(s *Status) {
		s.Delivered++
		s.LastDelivered = now
	})
	d.setFailing(t, false, nil)
}

// failed records a failed attempt.
func (d *Deliverer) failed(ctx context.Context, t *target, id string, attempt int, err error) {
	d.opts.Metrics.WebhookAttemptErrors.Add(ctx, 1)
	d.update(t, func(s *Status) { s.Attempts = attempt })
	if d.setFailing(t, true, err) {
		d.opts.Log.WarnContext(ctx, "webhook failing, retrying until delivered or too old", "user", t.user, "alert", id,
			"host", hostOf(d.hookOf(t).URL), "max_age", d.opts.MaxAge, "err", err)
	}
}

// setFailing marks t failing or not and counts the change in
// vigil.alerts.webhook.failing; it reports whether t started failing.
func (d *Deliverer) setFailing(t *target, failing bool, err error) bool {
	now := d.opts.Now()
	var changed bool
	d.update(t, func(s *Status) {
		changed = s.Failing != failing
		s.Failing = failing
		switch {
		case failing && changed:
			s.FailingSince = now
		case !failing:
			s.FailingSince, s.Attempts, s.LastError = time.Time{}, 0, ""
		}
		if err != nil {
			s.LastError = err.Error()
		}
	})
	if changed {
		delta := int64(1)
		if !failing {
			delta = -1
		}
		d.opts.Metrics.WebhookFailing.Add(context.Background(), delta)
	}
	return changed && failing
}

// giveUp terminates an alert that will not be delivered, with a log line
// and a count.
func (d *Deliverer) giveUp(ctx context.Context, t *target, msg jetstream.Msg, id, reason string, err error) {
	_ = msg.Term()
	d.opts.Metrics.WebhookFailures.Add(ctx, 1, metric.WithAttributes(attribute.String("reason", reason)))
	d.update(t, func(s *Status) { s.GivenUp++ })
	d.opts.Log.ErrorContext(ctx, "webhook alert given up", "user", t.user, "alert", id,
		"host", hostOf(d.hookOf(t).URL), "reason", reason, "err", err)
}

// keepInProgress tells the server every interval that msg is still being
// worked on, until the returned stop is called.
func keepInProgress(msg jetstream.Msg, interval time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(max(interval, time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				_ = msg.InProgress()
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}
