package localstack

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// installHint says how to install what the Start functions need.
const installHint = "run `make deps` (deploy/scripts/deps.sh), or apt-get install -y"

// Redis is a private redis-server started by StartRedis.
type Redis struct {
	proc *process
	port int
	tls  bool
}

// StartRedis runs redis-server on 127.0.0.1 with its state in opts.Dir and
// waits until it answers PING.
func StartRedis(ctx context.Context, opts Options) (*Redis, error) {
	bin, dir, err := prepareRedisServer(opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := withStartDeadline(ctx)
	defer cancel()
	return startOnPort(opts, func(port int) (*Redis, error) {
		return startRedisOn(ctx, bin, dir, port, opts)
	})
}

// prepareRedisServer checks opts, finds the redis-server binary (which also
// runs Sentinel) and creates opts.Dir, returning the binary and the absolute
// directory.
func prepareRedisServer(opts Options) (bin, dir string, err error) {
	if err := opts.validate(); err != nil {
		return "", "", err
	}
	bin, err = exec.LookPath("redis-server")
	if err != nil {
		return "", "", fmt.Errorf("%w: redis-server is not on PATH: %s redis-server", ErrMissingBinary, installHint)
	}
	dir, err = filepath.Abs(opts.Dir)
	if err != nil {
		return "", "", fmt.Errorf("%w: Dir %q: %w", ErrInvalidOptions, opts.Dir, err)
	}
	return bin, dir, ensureDir(dir, 0o755)
}

func startRedisOn(ctx context.Context, bin, dir string, port int, opts Options) (*Redis, error) {
	args := []string{
		"--bind", loopback,
		"--dir", dir,
		"--daemonize", "no",
		"--logfile", "",
	}
	args = append(args, redisListenArgs(port, opts.TLS)...)
	if opts.Persist {
		args = append(args, "--appendonly", "yes")
	} else {
		args = append(args, "--save", "", "--appendonly", "no")
	}
	if opts.RedisReplicaOf != "" {
		host, port, err := net.SplitHostPort(opts.RedisReplicaOf)
		if err != nil {
			return nil, fmt.Errorf("%w: RedisReplicaOf %q: %w", ErrInvalidOptions, opts.RedisReplicaOf, err)
		}
		args = append(args, "--replicaof", host, port)
		if opts.TLS != nil {
			args = append(args, "--tls-replication", "yes")
		}
	}
	if opts.RedisDatabases > 0 {
		args = append(args, "--databases", strconv.Itoa(opts.RedisDatabases))
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	proc, err := startProcess("redis-server", cmd, filepath.Join(dir, "redis.log"), syscall.SIGTERM, nil)
	if err != nil {
		return nil, err
	}
	r := &Redis{proc: proc, port: port, tls: opts.TLS != nil}
	if err := waitRedisReady(ctx, proc, r.Addr(), false, r.tls); err != nil {
		return nil, err
	}
	return r, nil
}

// redisListenArgs are redis-server's arguments for port: plain TCP, or
// with files TLS only (--port 0 --tls-port), client certificates
// verified when sent if files has a CA.
func redisListenArgs(port int, files *TLSFiles) []string {
	if files == nil {
		return []string{"--port", strconv.Itoa(port)}
	}
	args := []string{"--port", "0", "--tls-port", strconv.Itoa(port),
		"--tls-cert-file", files.CertFile, "--tls-key-file", files.KeyFile}
	if files.CAFile != "" {
		return append(args, "--tls-ca-cert-file", files.CAFile, "--tls-auth-clients", "optional")
	}
	return append(args, "--tls-auth-clients", "no")
}

// waitRedisReady waits until the redis-server process at addr (a server,
// or a sentinel when sentinel is set; over TLS when useTLS) answers PING,
// and kills it when it does not.
func waitRedisReady(ctx context.Context, proc *process, addr string, sentinel, useTLS bool) error {
	opts := &redis.Options{Addr: addr, DialTimeout: 500 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, MaxRetries: -1, PoolSize: 1}
	if useTLS {
		// Only whether it answers: the clients under test verify.
		opts.TLSConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // readiness probe
	}
	var ping func(context.Context) error
	if sentinel {
		client := redis.NewSentinelClient(opts)
		defer client.Close()
		ping = func(ctx context.Context) error { return client.Ping(ctx).Err() }
	} else {
		client := redis.NewClient(opts)
		defer client.Close()
		ping = func(ctx context.Context) error { return client.Ping(ctx).Err() }
	}
	if err := proc.waitReady(ctx, ping); err != nil {
		_ = proc.stop(syscall.SIGKILL)
		return err
	}
	return nil
}

// Addr is the server's host:port.
func (r *Redis) Addr() string {
	return net.JoinHostPort(loopback, strconv.Itoa(r.port))
}

// Port is the server's TCP port.
func (r *Redis) Port() int { return r.port }

// URL is the server's URL for logical database 0,
// redis://127.0.0.1:<port>/0.
func (r *Redis) URL() string {
	return r.DatabaseURL(0)
}

// DatabaseURL is the server's URL for logical database db:
// redis://127.0.0.1:<port>/<db>, rediss:// with Options.TLS.
func (r *Redis) DatabaseURL(db int) string {
	scheme := "redis"
	if r.tls {
		scheme = "rediss"
	}
	return fmt.Sprintf("%s://%s/%d", scheme, r.Addr(), db)
}

// LogPath is the file the server writes its log to.
func (r *Redis) LogPath() string {
	return r.proc.logPath
}

// Kill ends the server with SIGKILL, as a crash of its host would, and
// waits for it to exit.
func (r *Redis) Kill() error {
	return r.proc.stop(syscall.SIGKILL)
}

// Stop shuts the server down with SIGTERM (which saves the data when
// Persist is set) and waits for it to exit.
func (r *Redis) Stop() error {
	return r.proc.stop(syscall.SIGTERM)
}
