package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/health"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/telemetry"
	"vigil.dev/pkg/wait"
)

// Main is the whole of a binary's main: it runs run with a context that ends
// on SIGINT or SIGTERM and exits 1 with one line on stderr when run fails.
func Main(binary string, run func(ctx context.Context, args []string, stdout io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil && !errors.Is(err, config.ErrHelp) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", binary, err)
		os.Exit(1)
	}
}

// Runtime is what every service opens at start: its logger, telemetry, the
// NATS connection with JetStream, the contract's streams, and its health
// checks; later the resources the service opens (OnClose) and its micro
// service (Start).
type Runtime struct {
	Log      *slog.Logger
	NC       *nats.Conn
	JS       jetstream.JetStream
	Instance string
	// Health has the NATS checks from Boot; services add theirs (Redis,
	// consumers). It runs until Boot's ctx ends, served on
	// VIGIL_HEALTH_ADDR when set (with the metrics for Prometheus on
	// /metrics) and reported to systemd under a unit.
	Health *health.Health

	name            string
	shutdownTimeout time.Duration
	telemetry       *telemetry.Telemetry
	stopHealth      context.CancelFunc
	svc             *Service
	closers         []func()
}

// Boot opens the runtime of service name: logger, telemetry, NATS connection
// (named "<name> <instance>") and the contract's streams and KV bucket.
func Boot(ctx context.Context, name string, svc config.Service, nc config.NATS, cfg any, stdout io.Writer) (*Runtime, error) {
	rt := &Runtime{Instance: svc.InstanceName(), name: name, shutdownTimeout: svc.ShutdownTimeout}
	rt.Log = telemetry.NewLogger(stdout, telemetry.ParseLevel(svc.LogLevel), name, rt.Instance)
	rt.Log.Info("starting", "version", Version, "revision", revision(), "config", config.LogValue(cfg))
	var err error
	// The metrics are served for Prometheus on the health endpoint.
	if rt.telemetry, err = telemetry.Setup(ctx, name, Version, rt.Instance, telemetry.Options{Prometheus: svc.HealthAddr != ""}); err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	if rt.NC, err = natsx.Connect(ctx, nc, name+" "+rt.Instance, rt.Log); err != nil {
		return nil, errors.Join(err, rt.telemetry.Shutdown(ctx))
	}
	js, err := jetstream.New(rt.NC)
	if err != nil {
		return nil, errors.Join(err, rt.Close(ctx))
	}
	rt.JS = natsx.WithReplicas(js, nc.StreamReplicas)
	if err = ensureStreams(ctx, rt.JS, nc.PartitionCount(), rt.Log); err != nil {
		return nil, errors.Join(err, rt.Close(ctx))
	}
	rt.Health = health.New(rt.Log)
	if rt.telemetry.Metrics != nil {
		rt.Health.Route("/metrics", rt.telemetry.Metrics)
	}
	rt.Health.AddLive("nats_open", func(context.Context) error {
		if rt.NC.IsClosed() {
			return errors.New("the NATS connection is closed for good")
		}
		return nil
	})
	rt.Health.Add("nats", func(context.Context) error {
		if s := rt.NC.Status(); s != nats.CONNECTED {
			return fmt.Errorf("NATS connection %s", s)
		}
		return nil
	})
	var healthCtx context.Context
	healthCtx, rt.stopHealth = context.WithCancel(ctx)
	if _, err = rt.Health.Serve(healthCtx, svc.HealthAddr); err != nil {
		return nil, errors.Join(err, rt.Close(ctx))
	}
	return rt, nil
}

// streamsReadyTimeout bounds how long Boot waits for JetStream to answer
// the set-up of the contract's streams.
const streamsReadyTimeout = time.Minute

// ensureStreams sets up the contract's streams and KV bucket
// (natsx.EnsurePartitionedStreams), trying again every second while
// JetStream does not answer in time, for up to streamsReadyTimeout: a
// node that is still catching up with its cluster (its host was just
// restored) answers late, and exiting then would leave the instance to
// its supervisor. A refusal (a partition count that differs, a change the
// server cannot make) fails at once.
func ensureStreams(ctx context.Context, js jetstream.JetStream, partitions int, log *slog.Logger) error {
	giveUp := time.Now().Add(streamsReadyTimeout)
	for {
		err := natsx.EnsurePartitionedStreams(ctx, js, partitions, natsx.LogTo(log))
		if err == nil || !unanswered(err) || ctx.Err() != nil || time.Now().After(giveUp) {
			return err
		}
		log.Warn("JetStream did not answer the set-up of the streams; trying again", "err", err)
		if !wait.Sleep(ctx, time.Second) {
			return err
		}
	}
}

// unanswered reports whether err is a JetStream request that got no
// answer in time (rather than a refusal).
func unanswered(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		(errors.As(err, &apiErr) && apiErr.Code == 503)
}

// Start starts the service's micro service on the runtime's connection,
// named and described as Boot was, as Start does; Shutdown stops it.
// cfg.Name and cfg.Instance are filled in when empty.
func (rt *Runtime) Start(cfg Config, status StatusFunc) (*Service, error) {
	if rt.svc != nil {
		return nil, fmt.Errorf("service %s: started twice", rt.name)
	}
	if cfg.Name == "" {
		cfg.Name = rt.name
	}
	if cfg.Instance == "" {
		cfg.Instance = rt.Instance
	}
	svc, err := Start(rt.NC, cfg, rt.Log, status)
	if err != nil {
		return nil, err
	}
	rt.svc = svc
	return svc, nil
}

// OnClose registers f to run when the runtime closes, after the micro
// service has shut down: resources the service opened (a database pool)
// close in the reverse order of their opening.
func (rt *Runtime) OnClose(f func()) {
	rt.closers = append(rt.closers, f)
}

// OpenRedis opens the Redis client of cfg (redisstore.Open), checks it for
// readiness as "redis" and closes it when the runtime closes.
func (rt *Runtime) OpenRedis(ctx context.Context, cfg config.Redis) (*redis.Client, error) {
	rdb, err := redisstore.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	rt.Health.Add("redis", func(ctx context.Context) error { return rdb.Ping(ctx).Err() })
	rt.OnClose(func() { _ = rdb.Close() })
	return rdb, nil
}

// Serve is the rest of every service's Serve once Boot has opened the
// runtime: Launch runs start (see the package doc for its order), then
// Serve logs "running", waits until ctx ends and shuts down (Shutdown).
// start gets ctx: it bounds what start waits for; the parts that outlive
// start run on contexts of their own (Service.Go, Service.FollowStates).
func (rt *Runtime) Serve(ctx context.Context, start func(ctx context.Context) error) error {
	if err := rt.Launch(ctx, start); err != nil {
		return err
	}
	rt.Log.Info("running", "id", rt.svc.ID())
	<-ctx.Done()
	rt.Log.Info("shutting down")
	return rt.Shutdown()
}

// Launch runs start, which opens the service's resources and starts its
// micro service (Start) and parts. When start fails, what it started is
// shut down (Shutdown) and its error returned. Serve calls it; tests that
// need the started instance itself call it instead of Serve.
func (rt *Runtime) Launch(ctx context.Context, start func(ctx context.Context) error) error {
	err := start(ctx)
	if err == nil && rt.svc == nil {
		err = fmt.Errorf("service %s: start did not start the micro service", rt.name)
	}
	if err != nil {
		return errors.Join(err, rt.Shutdown())
	}
	return nil
}

// Shutdown shuts the instance down within VIGIL_SHUTDOWN_TIMEOUT: the
// micro service (Service.Shutdown: its endpoints stop, the parts stop in
// reverse order, the requests in flight finish, the connection drains),
// then the runtime closes (Close).
func (rt *Runtime) Shutdown() error {
	var err error
	if rt.svc != nil {
		err = rt.svc.Shutdown(rt.shutdownTimeout)
	}
	return errors.Join(err, rt.Close(context.Background()))
}

// Close closes the resources registered with OnClose (in reverse order),
// stops the health checks, closes the connection (if Shutdown did not
// drain it) and flushes telemetry.
func (rt *Runtime) Close(ctx context.Context) error {
	for i := len(rt.closers) - 1; i >= 0; i-- {
		rt.closers[i]()
	}
	rt.closers = nil
	if rt.stopHealth != nil {
		rt.stopHealth()
	}
	if rt.NC != nil && !rt.NC.IsClosed() {
		rt.NC.Close()
	}
	return rt.telemetry.Shutdown(ctx)
}
