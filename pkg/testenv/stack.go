package testenv

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/binaries"
	"vigil.dev/pkg/localstack"
)

var build struct {
	once sync.Once
	dir  string
	err  error
}

// BuildBinaries builds every binary of binaries.All into <repo>/bin/test
// once per test package (reusing an up-to-date build, see binaries.Build)
// and returns that directory.
func BuildBinaries(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		root, err := localstack.RepoRoot()
		if err != nil {
			build.err = err
			return
		}
		build.dir = filepath.Join(root, "bin", "test")
		build.err = binaries.Build(context.Background(), root, build.dir, binaries.All())
	})
	if build.err != nil {
		t.Fatalf("testenv: %v", build.err)
	}
	return build.dir
}

// Stack runs real vigil binaries as processes against real servers: a
// NATS server of its own, a Redis database and a migrated Postgres
// database of the test's own.
type Stack struct {
	NATSURL     string
	RedisURL    string
	DatabaseURL string
	// Env is added to every process's environment (KEY=value).
	Env []string

	t   testing.TB
	bin string
	nc  *nats.Conn
}

// NewStack starts the servers of a stack and builds the binaries.
func NewStack(t testing.TB) *Stack {
	t.Helper()
	return StackOn(t, StartNATS(t).URL(), Redis(t), Postgres(t))
}

// StackOn is a Stack on servers the test runs itself (one it stops and
// replaces, as the backup drill does): the NATS server at natsURL, the
// Redis database at redisURL and the PostgreSQL database at databaseURL.
// It builds the binaries and connects to NATS.
func StackOn(t testing.TB, natsURL, redisURL, databaseURL string) *Stack {
	t.Helper()
	s := &Stack{t: t, bin: BuildBinaries(t), NATSURL: natsURL, RedisURL: redisURL, DatabaseURL: databaseURL}
	nc, err := nats.Connect(s.NATSURL)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(nc.Close)
	s.nc = nc
	return s
}

// Conn is a NATS connection of the test to the stack's server.
func (s *Stack) Conn() *nats.Conn { return s.nc }

// Bin is the path of a built binary.
func (s *Stack) Bin(name string) string { return filepath.Join(s.bin, name) }

// Environ is the environment a stack process gets. Control's step
// timeout is 30 s instead of 5 s: on a loaded machine a feed's resume
// (its gap fill) can take longer than 5 s, and the tests check what a
// command does, not how fast (make bench measures that).
func (s *Stack) Environ(extra ...string) []string {
	env := append(os.Environ(),
		"NATS_URL="+s.NATSURL, "REDIS_URL="+s.RedisURL, "DATABASE_URL="+s.DatabaseURL,
		"VIGIL_LOG_LEVEL=debug", "VIGIL_SHUTDOWN_TIMEOUT=5s", "VIGIL_CONTROL_STEP_TIMEOUT=30s",
		// The same for a control of the previous release (make
		// test-upgrade), which knows only the former name.
		"VIGIL_STEP_TIMEOUT=30s")
	env = append(env, s.Env...)
	return append(env, extra...)
}

// Proc is one running service instance.
type Proc struct {
	*localstack.ServiceProcess
}

// Start runs one instance of service (vigil-feed, ...) named instance and
// waits until it answers $SRV.PING. extra adds environment variables. The
// process is stopped at the end of the test, and its log shown if the test
// failed.
func (s *Stack) Start(service, instance string, extra ...string) *Proc {
	s.t.Helper()
	return s.StartBinary(s.Bin(service), service, instance, extra...)
}

// StartBinary is Start with the binary at path binary, e.g. another
// version's (BuildRevision).
func (s *Stack) StartBinary(binary, service, instance string, extra ...string) *Proc {
	s.t.Helper()
	return &Proc{StartService(s.t, s.nc, localstack.ServiceOptions{
		Binary: binary, Service: service, Instance: instance,
		Env: s.Environ(extra...), LogPath: filepath.Join(s.t.TempDir(), instance+".log"),
		RegisterTimeout: 60 * time.Second,
	})}
}

// StartService runs a service process as opts says (localstack.StartService)
// and waits until it answers $SRV.PING on nc; the test fails if it does
// not. The process is stopped at the end of the test (SIGTERM, SIGKILL
// after 15 s), and the last lines of its log shown if the test failed.
func StartService(t testing.TB, nc *nats.Conn, opts localstack.ServiceOptions) *localstack.ServiceProcess {
	t.Helper()
	p, err := localstack.StartService(context.Background(), nc, opts)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		_ = p.Stop(15 * time.Second)
		if t.Failed() {
			t.Logf("--- %s log (last lines) ---\n%s", opts.Instance, p.Tail(40))
		}
	})
	return p
}

// Instances lists the micro service ids of service's live instances, by
// instance name (metadata "instance").
func (s *Stack) Instances(service string) map[string]string {
	return localstack.ServiceInstances(s.nc, service)
}

// Stop sends SIGTERM and waits for the process to exit (SIGKILL after 15 s).
func (p *Proc) Stop() { _ = p.ServiceProcess.Stop(15 * time.Second) }

// WaitFor polls cond (every 5 ms, backing off to 50 ms) until it is true
// or timeout passes, then fails the test naming what it waited for.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if poll(timeout, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	}) != nil {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// Eventually polls check as WaitFor polls its condition until it returns
// nil or timeout passes, then fails the test with check's last error.
func Eventually(t testing.TB, timeout time.Duration, check func() error) {
	t.Helper()
	if err := poll(timeout, check); err != nil {
		t.Fatalf("after %s: %v", timeout, err)
	}
}

// errNotYet is WaitFor's condition not yet true.
var errNotYet = errors.New("not yet")

// poll calls check (every 5 ms at first, backing off to every 50 ms)
// until it returns nil, or returns its last error once timeout passed.
func poll(timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for pause := 5 * time.Millisecond; ; pause = min(2*pause, 50*time.Millisecond) {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(min(pause, time.Until(deadline)+time.Millisecond))
	}
}
