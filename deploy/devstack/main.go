// Command devstack is `make run`: it brings up a private vigil stack on
// this machine — Redis, PostgreSQL and NATS with JetStream, their state in
// .run/ at the repository root — migrates the database, seeds the demo user,
// builds the service binaries into bin/ and runs them, their output
// prefixed by service name. A service that exits is restarted with backoff.
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
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
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
