package localstack

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// SentinelOptions says what a Redis Sentinel started by StartSentinel
// monitors.
type SentinelOptions struct {
	// MasterName is the name clients ask the sentinel for. Required.
	MasterName string
	// MasterAddr is the master's host:port at start. Required.
	MasterAddr string
	// Quorum is the number of sentinels that must agree the master is
	// down before a failover. Required (at least 1).
	Quorum int
	// DownAfter is how long the master must be unreachable before this
	// sentinel considers it down; 0 means one second.
	DownAfter time.Duration
}

func (o SentinelOptions) validate() error {
	if o.MasterName == "" {
		return fmt.Errorf("%w: SentinelOptions.MasterName is required", ErrInvalidOptions)
	}
	if _, _, err := net.SplitHostPort(o.MasterAddr); err != nil {
		return fmt.Errorf("%w: SentinelOptions.MasterAddr %q: %w", ErrInvalidOptions, o.MasterAddr, err)
	}
	if o.Quorum < 1 {
		return fmt.Errorf("%w: SentinelOptions.Quorum %d is below 1", ErrInvalidOptions, o.Quorum)
	}
	return nil
}

// Sentinel is a Redis Sentinel (redis-server --sentinel) started by
// StartSentinel.
type Sentinel struct {
	proc *process
	port int
}

// StartSentinel runs a Redis Sentinel on 127.0.0.1 that monitors
// sopts.MasterAddr, its config file (which the sentinel rewrites) in
// opts.Dir, and waits until it answers PING.
func StartSentinel(ctx context.Context, opts Options, sopts SentinelOptions) (*Sentinel, error) {
	if err := sopts.validate(); err != nil {
		return nil, err
	}
	bin, dir, err := prepareRedisServer(opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := withStartDeadline(ctx)
	defer cancel()
	return startOnPort(opts, func(port int) (*Sentinel, error) {
		return startSentinelOn(ctx, bin, dir, port, sopts)
	})
}

func startSentinelOn(ctx context.Context, bin, dir string, port int, sopts SentinelOptions) (*Sentinel, error) {
	host, masterPort, _ := net.SplitHostPort(sopts.MasterAddr)
	downAfter := sopts.DownAfter
	if downAfter <= 0 {
		downAfter = time.Second
	}
	conf := fmt.Sprintf(`bind %s
port %d
dir %s
daemonize no
logfile ""
sentinel monitor %s %s %s %d
sentinel down-after-milliseconds %[4]s %[8]d
sentinel failover-timeout %[4]s %[9]d
sentinel parallel-syncs %[4]s 1
`, loopback, port, dir, sopts.MasterName, host, masterPort, sopts.Quorum, downAfter.Milliseconds(), (4 * downAfter).Milliseconds())
	confPath := filepath.Join(dir, "sentinel-"+strconv.Itoa(port)+".conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("localstack: write sentinel config: %w", err)
	}
	cmd := exec.Command(bin, confPath, "--sentinel")
	cmd.Dir = dir
	proc, err := startProcess("redis-sentinel", cmd, filepath.Join(dir, "sentinel-"+strconv.Itoa(port)+".log"), syscall.SIGTERM, nil)
	if err != nil {
		return nil, err
	}
	s := &Sentinel{proc: proc, port: port}
	if err := waitRedisReady(ctx, proc, s.Addr(), true, false); err != nil {
		return nil, err
	}
	return s, nil
}

// Addr is the sentinel's host:port.
func (s *Sentinel) Addr() string {
	return net.JoinHostPort(loopback, strconv.Itoa(s.port))
}

// Stop shuts the sentinel down with SIGTERM and waits for it to exit.
func (s *Sentinel) Stop() error {
	return s.proc.stop(syscall.SIGTERM)
}
