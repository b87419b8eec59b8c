package stack

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Errors of the process runner.
var (
	// ErrStart reports a service that exited or did not register at start.
	ErrStart = errors.New("stack: service did not start")
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

// Proc is one running service instance.
type Proc struct {
	// Service is the binary (vigil-feed, ...), Instance its VIGIL_INSTANCE.
	Service, Instance string
	// ID is the instance's micro service id.
	ID string

	cmd       *exec.Cmd
	log       string
	pprofAddr string
	done      chan struct{}
	exitErr   error
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
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	env := append(baseEnv(), l.servers.Env()...)
	env = append(env, "VIGIL_INSTANCE="+instance, "VIGIL_SHUTDOWN_TIMEOUT=10s")
	addrFile := filepath.Join(l.servers.Dir, "logs", instance+".pprof")
	if l.bins.Profiling {
		env = append(env, "VIGIL_BENCH_PPROF=127.0.0.1:0", "VIGIL_BENCH_PPROF_ADDR_FILE="+addrFile)
	}
	cmd := exec.Command(l.bins.Path(service))
	cmd.Env = append(env, extra...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("stack: start %s: %w", service, err)
	}
	p := &Proc{Service: service, Instance: instance, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.exitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	deadline := time.Now().Add(registerTimeout)
	for {
		if id := l.Instances(service)[instance]; id != "" {
			p.ID = id
			break
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%w: %s exited: %v\n%s", ErrStart, instance, p.exitErr, p.Tail(30))
		case <-ctx.Done():
			p.Kill()
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			p.Kill()
			return nil, fmt.Errorf("%w: %s did not register within %s\n%s", ErrStart, instance, registerTimeout, p.Tail(30))
		}
		time.Sleep(50 * time.Millisecond)
	}
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
	out := map[string]string{}
	inbox := nats.NewInbox()
	sub, err := l.nc.SubscribeSync(inbox)
	if err != nil {
		return out
	}
	defer sub.Unsubscribe() //nolint:errcheck // best effort
	if err := l.nc.PublishRequest("$SRV.PING."+service, inbox, nil); err != nil {
		return out
	}
	for {
		msg, err := sub.NextMsg(250 * time.Millisecond)
		if err != nil {
			return out
		}
		var ping micro.Ping
		if json.Unmarshal(msg.Data, &ping) == nil {
			out[ping.Metadata["instance"]] = ping.ID
		}
	}
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
func (p *Proc) Stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		p.Kill()
		return fmt.Errorf("stack: %s ignored SIGTERM for %s and was killed", p.Instance, stopTimeout)
	}
	if p.exitErr != nil {
		return fmt.Errorf("stack: %s exited: %w\n%s", p.Instance, p.exitErr, p.Tail(10))
	}
	return nil
}

// Kill kills the process at once and waits for it.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// PID is the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

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

// Tail is the last n lines of the process's output.
func (p *Proc) Tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
