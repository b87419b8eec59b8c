// Command devstack is `make run`: it brings up a private vigil stack on
// this machine — Redis, PostgreSQL and NATS with JetStream, their state in
// .run/ at the repository root — migrates the database, seeds the demo user,
// builds the service binaries into bin/ and runs them. Each service's whole
// output (JSON logs) goes to .run/logs/<service>.log; the terminal gets one
// short line per log record, or the JSON lines prefixed by service name
// when stdout is not a terminal. The banner comes once every service has
// registered. A service that exits is restarted with backoff.
// Ctrl-C (or SIGTERM) stops the services, then NATS, Redis and PostgreSQL.
// Run it with -h to list its environment variables.
package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"vigil.dev/pkg/config"
	"vigil.dev/pkg/telemetry"
)

func main() {
	var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if telemetry.IsTerminal(os.Stderr) {
		h = telemetry.NewConsoleHandler(os.Stderr, slog.LevelInfo, telemetry.ColorOK(os.Stderr))
	}
	log := slog.New(h)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, log, os.Args[1:])
	if errors.Is(err, config.ErrHelp) {
		return
	}
	if err != nil {
		log.Error("dev stack failed", "err", err)
		stop()
		os.Exit(1)
	}
}
