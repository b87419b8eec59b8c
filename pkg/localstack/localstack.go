package localstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// Errors returned by the Start functions, wrapped with details.
var (
	// ErrInvalidOptions reports an Options value that cannot be used.
	ErrInvalidOptions = errors.New("localstack: invalid options")
	// ErrMissingBinary reports a server binary that is not installed.
	ErrMissingBinary = errors.New("localstack: server binary not installed")
	// ErrExited reports a server process that exited while starting.
	ErrExited = errors.New("localstack: server exited")
	// ErrNotReady reports a server that did not answer before the deadline.
	ErrNotReady = errors.New("localstack: server not ready")
	// ErrDirNotReachable reports a data directory the unprivileged
	// PostgreSQL user cannot reach.
	ErrDirNotReachable = errors.New("localstack: data directory not reachable")
	// ErrUnprivilegedUser reports a failure to find or create the
	// unprivileged user PostgreSQL runs as when the caller is root.
	ErrUnprivilegedUser = errors.New("localstack: no unprivileged user for postgres")
)

// DefaultStartTimeout bounds a Start call whose context has no deadline.
const DefaultStartTimeout = 60 * time.Second

// stopTimeout is how long Stop waits for a server to exit after the polite
// signal before it kills the process.
const stopTimeout = 30 * time.Second

// loopback is the only address Redis and PostgreSQL listen on.
const loopback = "127.0.0.1"

// portAttempts is how many free ports a Start call tries when Options.Port
// is 0 and another process takes the chosen port first.
const portAttempts = 3

// Options configures one server.
type Options struct {
	// Dir holds the server's state (data, logs, sockets). It is created
	// if missing. Required.
	Dir string
	// Port is the TCP port to listen on. 0 (or -1) picks a free port.
	Port int
	// Host is the address NATS listens on; empty means 127.0.0.1. Redis
	// and PostgreSQL ignore it and always listen on 127.0.0.1, because
	// they run without authentication.
	Host string
	// Persist makes the data survive a crash: Redis writes an append-only
	// file and RDB snapshots, PostgreSQL keeps fsync on. Without it (tests)
	// Redis keeps everything in memory and PostgreSQL runs with fsync,
	// synchronous_commit and full_page_writes off. PostgreSQL data stays
	// in Dir either way, so a second start reuses it.
	Persist bool
	// RedisDatabases is the number of Redis logical databases; 0 keeps the
	// Redis default (16). Ignored by the other servers.
	RedisDatabases int
	// RedisReplicaOf, when set (host:port), starts Redis as a replica of
	// that master. Ignored by the other servers.
	RedisReplicaOf string
	// NATSConfig, when set, is a nats-server configuration file (accounts,
	// users, permissions; its variables from the environment) that NATS
	// runs with; Dir, Host and Port still apply. Ignored by the other
	// servers.
	NATSConfig string
	// TLS, when set, makes the server take TLS connections only, with
	// this certificate and key (clients verify it with the CA that signed
	// it); TLS.CAFile, when set, verifies client certificates, which stay
	// optional. Redis then listens with --tls-port only, PostgreSQL with
	// ssl=on and hostssl lines only, NATS with a tls block (URL: tls://).
	TLS *TLSFiles
}

func (o Options) validate() error {
	if o.Dir == "" {
		return fmt.Errorf("%w: Dir is required", ErrInvalidOptions)
	}
	if o.Port < -1 || o.Port > 65535 {
		return fmt.Errorf("%w: Port %d is outside 0..65535", ErrInvalidOptions, o.Port)
	}
	if o.TLS != nil && (o.TLS.CertFile == "" || o.TLS.KeyFile == "") {
		return fmt.Errorf("%w: TLS needs CertFile and KeyFile", ErrInvalidOptions)
	}
	if o.RedisDatabases < 0 {
		return fmt.Errorf("%w: RedisDatabases %d is negative", ErrInvalidOptions, o.RedisDatabases)
	}
	return nil
}

// withStartDeadline returns ctx bounded by DefaultStartTimeout when it has
// no deadline of its own.
func withStartDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultStartTimeout)
}

// FreePort asks the kernel for a free TCP port on the loopback address
// (free when asked: a server that takes it later may find it taken).
func FreePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(loopback, "0"))
	if err != nil {
		return 0, fmt.Errorf("localstack: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startOnPort runs start with opts.Port, or with free ports when opts.Port
// is 0 or -1, trying another one when the chosen port turns out to be taken.
func startOnPort[T any](opts Options, start func(port int) (T, error)) (T, error) {
	if opts.Port > 0 {
		return start(opts.Port)
	}
	var zero T
	var lastErr error
	for range portAttempts {
		port, err := FreePort()
		if err != nil {
			return zero, err
		}
		handle, err := start(port)
		if err == nil {
			return handle, nil
		}
		if !errors.Is(err, errPortInUse) {
			return zero, err
		}
		lastErr = err
	}
	return zero, lastErr
}

// errPortInUse marks a start failure caused by a taken port, which
// startOnPort retries on another port.
var errPortInUse = errors.New("port already in use")

// classifyExit wraps errPortInUse into err when the server's log says its
// port was taken.
func classifyExit(err error, logTail string) error {
	if strings.Contains(logTail, "already in use") {
		return fmt.Errorf("%w (%w)", err, errPortInUse)
	}
	return err
}

// ensureDir creates dir (and parents) if missing.
func ensureDir(dir string, perm os.FileMode) error {
	if err := os.MkdirAll(dir, perm); err != nil {
		return fmt.Errorf("localstack: create %s: %w", dir, err)
	}
	return nil
}
