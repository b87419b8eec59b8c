package stack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/localstack"
)

// Errors of the process runner.
var (
	// ErrNoProfile reports a profile asked of a process without pprof.
	ErrNoProfile = errors.New("stack: process does not serve pprof")
)

// registerTimeout bounds how long a service may take to answer $SRV.PING.
const registerTimeout = 90 * time.Second

// stopTimeout is how long Stop waits after SIGTERM before it kills.
const stopTimeout = 20 * time.Second

// Launcher starts service processes against one stack's servers.
type Launcher struct {
	bins    *Binaries
	servers *Servers
	nc      *nats.Conn

	mu    sync.Mutex
	procs []*Proc
}

// NewLauncher returns a launcher of bins against servers; nc is a
// connection to the servers' NATS, used to see services register.
func NewLauncher(bins *Binaries, servers *Servers, nc *nats.Conn) *Launcher {
	return &Launcher{bins: bins, servers: servers, nc: nc}
}

// Proc is one running service instance, with what the benchmarks read of
// it beside the shared process runner (RSS, CPU profile).
type Proc struct {
	*localstack.ServiceProcess
	pprofAddr string
}

// baseEnv is the caller's environment without anything that would point
// a service at other servers or turn telemetry export on.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "NATS_"), strings.HasPrefix(name, "OTEL_"), strings.HasPrefix(name, "VIGIL_"),
			name == "REDIS_URL", name == "DATABASE_URL":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Start runs one instance of service named instance with the extra
// environment (KEY=value) and waits until it answers $SRV.PING.
func (l *Launcher) Start(ctx context.Context, service, instance string, extra ...string) (*Proc, error) {
	logPath := filepath.Join(l.servers.Dir, "logs", instance+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	env := append(baseEnv(), l.servers.Env()...)
	env = append(env, "VIGIL_SHUTDOWN_TIMEOUT=10s")
	addrFile := filepath.Join(l.servers.Dir, "logs", instance+".pprof")
	if l.bins.Profiling {
		env = append(env, "VIGIL_BENCH_PPROF=127.0.0.1:0", "VIGIL_BENCH_PPROF_ADDR_FILE="+addrFile)
	}
	sp, err := localstack.StartService(ctx, l.nc, localstack.ServiceOptions{
		Binary: l.bins.Path(service), Service: service, Instance: instance,
		Env: append(env, extra...), LogPath: logPath, RegisterTimeout: registerTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	p := &Proc{ServiceProcess: sp}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	if l.bins.Profiling {
		if addr, err := os.ReadFile(addrFile); err == nil {
			p.pprofAddr = string(addr)
		}
	}
	return p, nil
}

// Instances lists the micro service ids of service's live instances by
// instance name (metadata "instance"), as $SRV.PING finds them.
func (l *Launcher) Instances(service string) map[string]string {
	return localstack.ServiceInstances(l.nc, service)
}

// Procs are the processes started so far, running or not.
func (l *Launcher) Procs() []*Proc {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Proc(nil), l.procs...)
}

// StopAll stops every process this launcher started, newest first, and
// returns the unclean exits.
func (l *Launcher) StopAll() error {
	procs := l.Procs()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Stop sends SIGTERM and waits for the process to exit (SIGKILL after
// stopTimeout). It returns an error naming the instance when the exit was
// not clean.
func (p *Proc) Stop() error { return p.ServiceProcess.Stop(stopTimeout) }

// RSS is the process's resident set size in bytes (VmRSS of
// /proc/<pid>/status).
func (p *Proc) RSS() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.PID()))
	if err != nil {
		return 0, fmt.Errorf("stack: rss of %s: %w", p.Instance, err)
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		if rest, ok := strings.CutPrefix(scanner.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("stack: rss of %s: %q: %w", p.Instance, rest, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("stack: rss of %s: no VmRSS line", p.Instance)
}

// CPUProfile records the process's CPU profile for d (net/http/pprof,
// see Binaries.Profiling) and returns it (gzipped protobuf).
func (p *Proc) CPUProfile(ctx context.Context, d time.Duration) ([]byte, error) {
	if p.pprofAddr == "" {
		return nil, fmt.Errorf("%w: %s", ErrNoProfile, p.Instance)
	}
	seconds := max(1, int(d.Round(time.Second)/time.Second))
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.pprofAddr, seconds)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("stack: profile %s: %w", p.Instance, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("stack: profile %s: %s %v %s", p.Instance, resp.Status, err, body)
	}
	return body, nil
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat's CPU
// times (100 on Linux on every architecture the project runs on).
const clockTicks = 100

// CPUTime is the CPU time the process has used so far, user and system
// (utime + stime of /proc/<pid>/stat).
func (p *Proc) CPUTime() (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID()))
	if err != nil {
		return 0, fmt.Errorf("stack: cpu time of %s: %w", p.Instance, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// the fields counted here start after its closing parenthesis, with
	// field 3 (state) first, so utime (14) and stime (15) are 11 and 12.
	end := strings.LastIndexByte(string(data), ')')
	fields := strings.Fields(string(data[end+1:]))
	if end < 0 || len(fields) < 13 {
		return 0, fmt.Errorf("stack: cpu time of %s: unexpected /proc stat %q", p.Instance, data)
	}
	var ticks int64
	for _, f := range fields[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stack: cpu time of %s: %w", p.Instance, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}
