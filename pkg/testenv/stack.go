package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"vigil.dev/pkg/localstack"
)

// Binaries are the vigil service binaries a Stack runs, by service name.
var Binaries = map[string]string{
	"vigil-feed":       "./services/feed",
	"vigil-indicators": "./services/indicators",
	"vigil-alerts":     "./services/alerts",
	"vigil-control":    "./services/control",
	"vigilctl":         "./services/control/cmd/vigilctl",
}

var build struct {
	once sync.Once
	dir  string
	err  error
}

// BuildBinaries builds every binary of Binaries that exists into
// <repo>/bin/test once per test package (go build is incremental) and
// returns that directory.
func BuildBinaries(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		root, err := localstack.RepoRoot()
		if err != nil {
			build.err = err
			return
		}
		build.dir = filepath.Join(root, "bin", "test")
		for name, pkg := range Binaries {
			if _, err := os.Stat(filepath.Join(root, pkg, "main.go")); err != nil {
				continue
			}
			cmd := exec.Command("go", "build", "-o", filepath.Join(build.dir, name), pkg)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				build.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
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
	s := &Stack{t: t, bin: BuildBinaries(t)}
	s.NATSURL = StartNATS(t).URL()
	s.RedisURL = Redis(t)
	s.DatabaseURL = Postgres(t)
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

// Environ is the environment a stack process gets.
func (s *Stack) Environ(extra ...string) []string {
	env := append(os.Environ(),
		"NATS_URL="+s.NATSURL, "REDIS_URL="+s.RedisURL, "DATABASE_URL="+s.DatabaseURL,
		"VIGIL_LOG_LEVEL=debug", "VIGIL_SHUTDOWN_TIMEOUT=5s")
	env = append(env, s.Env...)
	return append(env, extra...)
}

// Proc is one running service instance.
type Proc struct {
	Service  string
	Instance string
	cmd      *exec.Cmd
	log      string
	done     chan struct{}
	exitErr  error
}

// Start runs one instance of service (vigil-feed, ...) named instance and
// waits until it answers $SRV.PING. extra adds environment variables.
func (s *Stack) Start(service, instance string, extra ...string) *Proc {
	s.t.Helper()
	logPath := filepath.Join(s.t.TempDir(), instance+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(s.Bin(service))
	cmd.Env = s.Environ(append([]string{"VIGIL_INSTANCE=" + instance}, extra...)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("testenv: start %s: %v", service, err)
	}
	p := &Proc{Service: service, Instance: instance, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.exitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	s.t.Cleanup(func() {
		p.Stop()
		if s.t.Failed() {
			s.t.Logf("--- %s log (last lines) ---\n%s", instance, p.Tail(40))
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for !s.answers(service, instance) {
		select {
		case <-p.done:
			s.t.Fatalf("testenv: %s exited at start: %v\n%s", instance, p.exitErr, p.Tail(40))
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("testenv: %s did not register within 60s\n%s", instance, p.Tail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// Instances lists the micro service ids of service's live instances, by
// instance name (metadata "instance").
func (s *Stack) Instances(service string) map[string]string {
	out := map[string]string{}
	inbox := nats.NewInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return out
	}
	defer sub.Unsubscribe()
	if err := s.nc.PublishRequest("$SRV.PING."+service, inbox, nil); err != nil {
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

func (s *Stack) answers(service, instance string) bool {
	_, ok := s.Instances(service)[instance]
	return ok
}

// Stop sends SIGTERM and waits for the process to exit (SIGKILL after 15 s).
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.Kill()
	}
}

// Kill kills the process at once (no clean shutdown) and waits for it.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Exited reports whether the process has ended, with its exit error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.exitErr
	default:
		return false, nil
	}
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

// Log is the whole output of the process so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// WaitFor polls cond every 50 ms until it is true or timeout passes, then
// fails the test naming what it waited for.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
