// Package daemon is vigil-alerts' wiring, the vigil-alerts service: it evaluates each user's
// rules on fresh indicator values and publishes and stores alerts, exactly
// one per event.
//
// An instance joins the membership group vigil-alerts (pkg/membership)
// and owns the users that rendezvous hashing gives it. It watches KV
// VIGIL_STATE for each user's desired state (paused, mode, settings),
// consumes VIGIL_INDICATORS with a consumer of its own (durable
// vigil-alerts-<id> with an inactivity threshold), acknowledges the
// updates of users it does not own at once, and hands the others to
// internal/monitor, one worker per shard of users so that each user's
// updates stay in order. A worker takes what its shard holds (up to 256
// updates) as one batch: the batch's alerts are recorded together and each
// user's engine memory is saved once before the updates are acknowledged.
// The monitor records alerts in the VIGIL_ALERTS stream and Postgres
// alert_events, keeps each user's engine memory in KV VIGIL_ALERT_STATE
// and catches up from Redis when it gains a user. Each owned user's
// webhook is fed from the stream by internal/webhook, and every instance
// projects the stream into alert_events (internal/record).
// Control verbs pause, resume, apply and status are answered on
// vigil.svc.alerts.* by every instance.
package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/partition"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/service"
	"vigil.dev/services/alerts/internal/history"
	"vigil.dev/services/alerts/internal/metrics"
	"vigil.dev/services/alerts/internal/monitor"
	"vigil.dev/services/alerts/internal/record"
	"vigil.dev/services/alerts/internal/snapshots"
	"vigil.dev/services/alerts/internal/webhook"
)

// description is the micro service's description.
const description = "vigil alerts: evaluates each user's rules on fresh indicator values"

// Run runs vigil-alerts until ctx ends: it loads the configuration from the
// environment (-h in args lists it) and serves.
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	var cfg Config
	if err := config.Load(&cfg, contract.ServiceAlerts, "evaluates each user's rules on fresh indicator values", args, stdout); err != nil {
		return err
	}
	return Serve(ctx, cfg, stdout)
}

// Serve runs one vigil-alerts instance with cfg until ctx ends, then shuts
// down (pkg/service, see instance.stopEvaluating and start for the
// order).
func Serve(ctx context.Context, cfg Config, stdout io.Writer) error {
	rt, err := service.Boot(ctx, contract.ServiceAlerts, cfg.Service, cfg.NATS, &cfg, stdout)
	if err != nil {
		return err
	}
	return rt.Serve(ctx, func(ctx context.Context) error {
		_, err := start(ctx, cfg, rt, options{})
		return err
	})
}

// options are the parts of an instance that tests replace.
type options struct {
	// now is the engines' clock (time.Now when nil).
	now func() time.Time
	// membership tunes the heartbeat (the package defaults when zero).
	membership membership.Options
	// metrics replaces the instruments on the global meter provider.
	metrics *metrics.Metrics
}

// instance is one running vigil-alerts.
type instance struct {
	cfg     Config
	rt      *service.Runtime
	log     *slog.Logger
	svc     *service.Service
	group   *membership.Group
	pool    *pgxpool.Pool
	rdb     *redis.Client
	hooks   *webhook.Deliverer
	monitor *monitor.Monitor
	metrics *metrics.Metrics
	tracer  trace.Tracer
	started time.Time

	// loopCtx ends the desired-state watch and the reconcile loop;
	// workCtx the evaluation of updates.
	loopCtx, workCtx    context.Context
	stopLoops, stopWork context.CancelFunc
	loops               sync.WaitGroup
	// webhooks are the users' webhooks as the desired states give them.
	webhooks *webhookTargets
	// projector writes alert_events from VIGIL_ALERTS until stopProjector.
	projector     *record.Projector
	stopProjector context.CancelFunc
	projecting    sync.WaitGroup
	consumer      *partition.Consumer
	dispatch      *dispatcher
	// ready is set once start has built every part status reads.
	ready atomic.Bool
}

// start opens the instance's resources on rt and starts its parts; each
// part's stop is registered with OnShutdown as it starts (rt.Shutdown
// stops what started when start fails).
func start(ctx context.Context, cfg Config, rt *service.Runtime, opts options) (_ *instance, err error) {
	in := &instance{cfg: cfg, rt: rt, log: rt.Log, started: time.Now().UTC(), tracer: otel.Tracer(metrics.MeterName)}
	in.loopCtx, in.stopLoops = context.WithCancel(context.Background())
	in.workCtx, in.stopWork = context.WithCancel(context.Background())
	if in.metrics = opts.metrics; in.metrics == nil {
		if in.metrics, err = metrics.New(nil); err != nil {
			return nil, err
		}
	}
	// Postgres only holds the projection alert_events: the instance starts
	// and records alerts while it is down.
	if in.pool, err = db.Open(cfg.Postgres); err != nil {
		return nil, err
	}
	rt.OnClose(in.pool.Close)
	if in.rdb, err = rt.OpenRedis(ctx, cfg.Redis); err != nil {
		return nil, err
	}
	snaps, err := snapshots.Open(ctx, rt.JS)
	if err != nil {
		return nil, err
	}
	in.webhooks = newWebhookTargets()
	if in.svc, err = rt.Start(service.Config{Svc: contract.SvcAlerts, Description: description, Verbs: verbs},
		func(ctx context.Context, _ string) any { return in.status(ctx) }); err != nil {
		return nil, err
	}
	// Shutdown runs these in reverse: stop evaluating, stop projecting,
	// leave, stop the webhook deliveries (the alert in hand goes back to
	// the stream).
	if in.hooks, err = webhook.New(rt.JS, webhook.Options{
		Timeout: cfg.WebhookTimeout, InitialBackoff: cfg.WebhookBackoff, MaxBackoff: cfg.WebhookMaxBackoff,
		MaxAge: cfg.WebhookMaxAge, AckWait: cfg.WebhookAckWait, Log: rt.Log, Metrics: in.metrics,
	}); err != nil {
		return nil, err
	}
	in.svc.OnShutdown(in.closeHooks)
	in.log = rt.Log.With("id", in.svc.ID())
	if opts.membership.Log == nil {
		opts.membership.Log = in.log
	}
	if in.group, err = membership.Join(ctx, rt.JS, contract.ServiceAlerts, in.svc.ID(), opts.membership); err != nil {
		return nil, err
	}
	in.svc.OnShutdown(in.leave)
	in.startProjecting()
	in.svc.OnShutdown(in.stopProjecting)
	if in.monitor, err = monitor.New(monitor.Deps{
		Recorder:  record.New(rt.JS),
		Snapshots: snaps,
		History:   history.New(redisstore.New(in.rdb, 0)),
		Ownership: userOwnership{in},
	}, monitor.Options{Now: opts.now, Log: in.log, Metrics: in.metrics,
		RetryBackoff: cfg.RetryBackoff, MaxRetryBackoff: cfg.MaxRetryBackoff, MaxAlertsPerMinute: cfg.AlertsPerMinute}); err != nil {
		return nil, err
	}
	// The consumer claims its partitions before any user is gained, so an
	// update published after a gain's catch-up read Redis is delivered to
	// it; it consumes once the desired states are loaded.
	if in.consumer, err = in.newConsumer(ctx, in.group); err != nil {
		return nil, err
	}
	rt.Health.Add("consumer", in.consumer.Ready)
	in.consumer.Claim(ctx)
	states, err := service.FollowStates(ctx, in.loopCtx, rt.JS, in.log, in.applyDesired)
	if err != nil {
		return nil, errors.Join(err, in.consumer.Stop(ctx))
	}
	in.loops.Add(1)
	go func() { defer in.loops.Done(); <-states.Done() }()
	in.dispatch = newDispatcher(cfg.Workers, in.process)
	in.svc.OnShutdown(in.stopEvaluating)
	if err = in.consumer.Start(in.loopCtx); err != nil {
		return nil, err
	}
	in.loops.Add(1)
	go in.reconcileLoop()
	handlers := map[contract.Verb]service.Handler{contract.VerbPause: in.pause, contract.VerbResume: in.resume, contract.VerbApply: in.apply, contract.VerbPlan: in.plan}
	for _, verb := range verbs {
		if err = in.svc.Handle(verb, handlers[verb]); err != nil {
			return nil, err
		}
	}
	in.ready.Store(true)
	return in, nil
}

// verbs are the control verbs of alerts (besides status): their endpoints
// exist from the start and wait for the handlers, set once the instance
// runs.
var verbs = []contract.Verb{contract.VerbPause, contract.VerbResume, contract.VerbApply, contract.VerbPlan}

// stopEvaluating ends the loops, stops consuming after the updates
// delivered (the consumer's Stop waits for them, hands the partitions over
// and deletes the consumer; when ctx ends first they are cancelled and
// rolled back).
func (in *instance) stopEvaluating(ctx context.Context) error {
	in.stopLoops()
	err := in.consumer.Stop(ctx)
	if err != nil {
		in.log.Warn("stopping the consumer", "err", err)
	}
	err = in.dispatch.close(ctx)
	if err != nil {
		in.stopWork()
		err = errors.Join(err, in.dispatch.close(context.Background()))
	}
	in.stopWork()
	in.loops.Wait()
	return err
}

// startProjecting runs the projection of VIGIL_ALERTS into alert_events.
func (in *instance) startProjecting() {
	in.projector = record.NewProjector(in.rt.JS, in.pool, record.ProjectorOptions{
		RetryBackoff: in.cfg.RetryBackoff, MaxRetryBackoff: in.cfg.MaxRetryBackoff, Log: in.log})
	ctx, cancel := context.WithCancel(context.Background())
	in.stopProjector = cancel
	in.projecting.Go(func() { _ = in.projector.Run(ctx) })
}

// stopProjecting stops the projection; a batch in hand is delivered again
// to another instance.
func (in *instance) stopProjecting(context.Context) error {
	in.stopProjector()
	in.projecting.Wait()
	return nil
}

// leave leaves the membership group, so the other instances take this
// instance's users over at once.
func (in *instance) leave(ctx context.Context) error { return in.group.Leave(ctx) }

// closeHooks stops the webhook deliveries; what is not delivered stays in
// the users' consumers for the next owner.
func (in *instance) closeHooks(context.Context) error {
	in.hooks.Close()
	return nil
}

// status answers the status verb.
func (in *instance) status(ctx context.Context) any {
	reply := contract.AlertsStatus{Instance: in.rt.Instance, StartedAt: in.started, Users: map[string]contract.AlertsUserStatus{}}
	if !in.ready.Load() {
		return reply
	}
	reply.Members = in.group.Members()
	reply.Partitions = in.consumer.Partitions()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if info, err := in.consumer.Info(ctx); err == nil {
		reply.Consumer = &contract.ConsumerBacklog{Pending: info.NumPending, AckPending: info.NumAckPending}
	}
	if cons, err := in.rt.JS.Consumer(ctx, contract.StreamAlerts, record.ProjectorConsumer); err == nil {
		info := cons.CachedInfo()
		reply.Projection = &contract.ConsumerBacklog{Pending: info.NumPending, AckPending: info.NumAckPending}
	}
	reply.Users = in.monitor.Status()
	if hooks := in.hooks.Status(ctx); len(hooks) > 0 {
		reply.Webhooks = hooks
	}
	return reply
}
