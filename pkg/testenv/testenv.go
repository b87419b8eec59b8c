// Package testenv gives tests real servers: NATS with JetStream, Redis and
// PostgreSQL, started at most once per test package and stopped after its
// tests, with per-test isolation on top.
//
// A package that uses it runs its tests through Run:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }
//
// Servers start on first use, so a package pays only for what its tests
// ask for. When a server cannot start — typically redis-server or the
// PostgreSQL binaries are not installed — every test that asks for it fails
// (it does not skip) with the reason and how to install (`make deps`).
//
// Isolation: Redis gives each call its own flushed logical database;
// PostgreSQL gives each call its own database, copied from a migrated
// template and dropped at the end of the test; StartNATS gives a test its
// own server, while NATS shares one per package.
package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"vigil.dev/pkg/localstack"
)

// startTimeout bounds the start of a shared server.
const startTimeout = 3 * time.Minute

// env is the state of the test package's servers.
var env struct {
	mu     sync.Mutex
	active bool   // Run is running the tests
	dir    string // parent of the shared servers' directories

	nats     shared[*localstack.NATS]
	redis    shared[*localstack.Redis]
	postgres shared[*postgresEnv]

	redisDatabases atomic.Int64 // logical databases handed out
}

// shared is a server started once, on first use.
type shared[T any] struct {
	once    sync.Once
	started atomic.Bool
	val     T
	err     error
}

// get starts the server with start on the first call and returns the same
// result to every call.
func (s *shared[T]) get(start func(ctx context.Context, dir string) (T, error)) (T, error) {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		s.val, s.err = start(ctx, env.dir)
		s.started.Store(s.err == nil)
	})
	return s.val, s.err
}

// Run runs the package's tests (m.Run), then stops every server they
// started and removes the servers' data. It returns the exit code for
// os.Exit.
func Run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "vigil-testenv-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: create scratch directory: %v\n", err)
		return 1
	}
	env.mu.Lock()
	env.dir, env.active = dir, true
	env.mu.Unlock()

	code := m.Run()

	env.mu.Lock()
	env.active = false
	env.mu.Unlock()
	if err := teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: remove %s: %v\n", dir, err)
	}
	return code
}

// teardown stops the shared servers that started.
func teardown() error {
	var errs []error
	if env.nats.started.Load() {
		errs = append(errs, env.nats.val.Stop())
	}
	if env.redis.started.Load() {
		errs = append(errs, env.redis.val.Stop())
	}
	if env.postgres.started.Load() {
		errs = append(errs, env.postgres.val.stop())
	}
	for _, err := range errs {
		if err != nil {
			return fmt.Errorf("stop servers: %w", err)
		}
	}
	return nil
}

// requireRun fails t unless TestMain runs the tests through Run, which
// alone stops the shared servers.
func requireRun(t testing.TB) {
	t.Helper()
	env.mu.Lock()
	active := env.active
	env.mu.Unlock()
	if !active {
		t.Fatal("testenv: this package needs `func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }`")
	}
}

// NATS returns the package's shared NATS server (JetStream enabled),
// starting it on first use. Tests that need a server of their own use
// StartNATS.
func NATS(t testing.TB) *localstack.NATS {
	t.Helper()
	requireRun(t)
	srv, err := env.nats.get(func(ctx context.Context, dir string) (*localstack.NATS, error) {
		return localstack.StartNATS(ctx, localstack.Options{Dir: filepath.Join(dir, "nats")})
	})
	if err != nil {
		t.Fatalf("testenv: start NATS: %v", err)
	}
	return srv
}

// StartNATS starts a NATS server with JetStream for this test alone, its
// store in t.TempDir(), stopped when the test ends. It works without Run.
func StartNATS(t testing.TB) *localstack.NATS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	srv, err := localstack.StartNATS(ctx, localstack.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("testenv: start NATS: %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	return srv
}
