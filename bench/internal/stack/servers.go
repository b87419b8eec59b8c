// Package stack runs a private vigil stack for the benchmarks: NATS
// (embedded), Redis and PostgreSQL started with pkg/localstack in a
// directory of their own, and the real service binaries, built from the
// repository and run as processes against them.
//
// It is the benchmark runner's counterpart of pkg/testenv's Stack, which
// needs a testing.TB: the runner is a program, so failures are errors
// and every process is stopped by the caller (Launcher.StopAll), with a
// parent-death signal as a safety net.
package stack

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
)

// Servers are the NATS, Redis and PostgreSQL servers of one stack.
type Servers struct {
	// Dir holds the servers' data and the services' logs.
	Dir      string
	NATS     *localstack.NATS
	Redis    *localstack.Redis
	Postgres *localstack.Postgres
}

// StartServers starts NATS with JetStream, Redis and PostgreSQL with their
// state under dir, and migrates the database (pkg/db).
func StartServers(ctx context.Context, dir string) (s *Servers, err error) {
	s = &Servers{Dir: dir}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Stop())
		}
	}()
	if s.NATS, err = localstack.StartNATS(ctx, localstack.Options{Dir: filepath.Join(dir, "nats")}); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	if s.Redis, err = localstack.StartRedis(ctx, localstack.Options{Dir: filepath.Join(dir, "redis")}); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	if s.Postgres, err = localstack.StartPostgres(ctx, localstack.Options{Dir: filepath.Join(dir, "postgres")}); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	pool, err := db.NewPool(ctx, s.Postgres.URL())
	if err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	defer pool.Close()
	if err := db.Migrate(ctx, pool); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	return s, nil
}

// NATSURL is the NATS server's client URL.
func (s *Servers) NATSURL() string { return s.NATS.URL() }

// RedisURL is the URL of Redis database 0, the one the services use.
func (s *Servers) RedisURL() string { return s.Redis.URL() }

// DatabaseURL is the URL of the migrated PostgreSQL database.
func (s *Servers) DatabaseURL() string { return s.Postgres.URL() }

// Env is the environment that points a service at these servers.
func (s *Servers) Env() []string {
	return []string{"NATS_URL=" + s.NATSURL(), "REDIS_URL=" + s.RedisURL(), "DATABASE_URL=" + s.DatabaseURL()}
}

// Stop stops the servers that started, PostgreSQL first.
func (s *Servers) Stop() error {
	var errs []error
	if s.Postgres != nil {
		errs = append(errs, s.Postgres.Stop())
	}
	if s.Redis != nil {
		errs = append(errs, s.Redis.Stop())
	}
	if s.NATS != nil {
		errs = append(errs, s.NATS.Stop())
	}
	return errors.Join(errs...)
}
