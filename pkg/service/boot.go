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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/health"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/telemetry"
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
// checks.
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

	telemetry  *telemetry.Telemetry
	stopHealth context.CancelFunc
}

// Boot opens the runtime of service name: logger, telemetry, NATS connection
// (named "<name> <instance>") and the contract's streams and KV bucket.
func Boot(ctx context.Context, name string, svc config.Service, nc config.NATS, cfg any, stdout io.Writer) (*Runtime, error) {
	rt := &Runtime{Instance: svc.InstanceName()}
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
	if err = natsx.EnsurePartitionedStreams(ctx, rt.JS, nc.PartitionCount(), natsx.LogTo(rt.Log)); err != nil {
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

// Close stops the health checks, closes the connection (if Shutdown did
// not drain it) and flushes telemetry.
func (rt *Runtime) Close(ctx context.Context) error {
	if rt.stopHealth != nil {
		rt.stopHealth()
	}
	if rt.NC != nil && !rt.NC.IsClosed() {
		rt.NC.Close()
	}
	return rt.telemetry.Shutdown(ctx)
}
