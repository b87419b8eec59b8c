package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/testenv"
)

// lockedBuffer is an output buffer safe to read while a process writes it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// devStack is a running dev stack (the devstack binary, as make run runs
// it) on ports and directories of the test's own.
type devStack struct {
	natsURL string
	dir     string // VIGIL_DEV_DIR
	config  string // XDG_CONFIG_HOME: the nats CLI contexts go to <config>/nats
	bin     string // VIGIL_DEV_BIN
	out     *lockedBuffer
	cmd     *exec.Cmd
}

// startDevStack builds the devstack binary and runs it with stdout not on
// a terminal, as CI would, until the test ends (then SIGTERM, as Ctrl-C).
func startDevStack(t *testing.T) *devStack {
	t.Helper()
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	ds := &devStack{dir: filepath.Join(work, "run"), bin: filepath.Join(work, "bin"), config: filepath.Join(work, "config"), out: &lockedBuffer{}}
	devstack := filepath.Join(ds.bin, "devstack")
	build := exec.Command("go", "build", "-o", devstack, "./deploy/devstack")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./deploy/devstack: %v\n%s", err, out)
	}
	natsPort := testenv.FreePort(t)
	ds.natsURL = fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	ds.cmd = exec.Command(devstack)
	ds.cmd.Dir = root
	ds.cmd.Env = append(os.Environ(),
		fmt.Sprintf("VIGIL_DEV_NATS_PORT=%d", natsPort),
		fmt.Sprintf("VIGIL_DEV_REDIS_PORT=%d", testenv.FreePort(t)),
		fmt.Sprintf("VIGIL_DEV_POSTGRES_PORT=%d", testenv.FreePort(t)),
		"VIGIL_DEV_DIR="+ds.dir, "VIGIL_DEV_BIN="+ds.bin, "TRACING=0", "AUTH=", "XDG_CONFIG_HOME="+ds.config,
		"VIGIL_SIM_CLOCK=", "VIGIL_SIM_ANCHOR=", "VIGIL_FEED_SOURCE=sim")
	ds.cmd.Stdout, ds.cmd.Stderr = ds.out, ds.out
	ds.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := ds.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ds.cmd.Wait() }()
	t.Cleanup(func() {
		_ = ds.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("the dev stack did not stop cleanly on SIGTERM: %v", err)
			}
		case <-time.After(60 * time.Second):
			_ = syscall.Kill(-ds.cmd.Process.Pid, syscall.SIGKILL)
			t.Errorf("the dev stack did not stop within 60 s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("--- dev stack output ---\n%s", ds.out.String())
		}
	})
	return ds
}

// context reads the nats CLI context name the dev stack wrote.
func (ds *devStack) context(t *testing.T, name string) natsContext {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ds.config, "nats", "context", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var c natsContext
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("context %s: %v", name, err)
	}
	return c
}

// userURL is the dev stack's NATS URL with the credentials of context name.
func (ds *devStack) userURL(t *testing.T, name string) string {
	t.Helper()
	c := ds.context(t, name)
	if c.URL != ds.natsURL {
		t.Fatalf("context %s has url %q, want %q", name, c.URL, ds.natsURL)
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(c.User, c.Password)
	return u.String()
}

// vigilctlEnv is the environment of vigilctl run as an operator would
// after make run: the contexts the dev stack wrote, no flags.
func (ds *devStack) vigilctlEnv() []string {
	return append(os.Environ(), "NO_COLOR=1", "XDG_CONFIG_HOME="+ds.config, "NATS_URL=", "NATS_CONTEXT=", "NATS_CREDS=")
}

// demoRule is the demo user's rule on 1m that fires within seconds and
// then once a minute (deploy/dev/demo-settings.json).
const demoRule = "demo-rule-btc-price-every-minute"

// TestDevStack runs the dev stack as make run does and checks what a new
// user sees in the first minute: the banner (with the logs' paths and how
// to watch alerts) once every service is up, the demo rule's alert on
// vigil.alert.demo.> soon after, the services' JSON logs in
// <dir>/logs/<service>.log, and vigilctl top's plain output.
func TestDevStack(t *testing.T) {
	ds := startDevStack(t)
	// Building four services on a loaded 2-core machine takes minutes.
	testenv.WaitFor(t, 10*time.Minute, "the banner (vigil dev stack is up)", func() bool {
		return strings.Contains(ds.out.String(), "Ctrl-C stops everything.")
	})
	up := time.Now()
	banner := ds.out.String()
	for _, want := range []string{
		"vigil dev stack is up in ",
		"market    simulator replaying the last 15m at 60x, then on the wall clock",
		"log " + filepath.Join(ds.dir, "logs", "feed.log"),
		"log " + filepath.Join(ds.dir, "logs", "control.log"),
		"sub 'vigil.alert.demo.>'",
		"alerts --user demo --follow",
		`auth      on: nats contexts "vigil" (admin, selected) and "demo" (tenant demo)`,
		"nats --context demo req vigil.cmd.demo.resume",
	} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner lacks %q", want)
		}
	}

	t.Run("demo alert", func(t *testing.T) {
		_, js := testenv.Connect(t, ds.userURL(t, "vigil"))
		var first jetstream.RawStreamMsg
		// The demo rule's own subject: the other demo rules fire too (a
		// 5m cross came first once), and the README promises this one.
		subject := "vigil.alert.demo." + demoRule
		testenv.WaitFor(t, 3*time.Minute, "an alert of the demo rule on "+subject, func() bool {
			ctx, cancel := testContext(5 * time.Second)
			defer cancel()
			stream, err := js.Stream(ctx, contract.StreamAlerts)
			if err != nil {
				return false
			}
			msg, err := stream.GetLastMsgForSubject(ctx, subject)
			if err != nil {
				return false
			}
			first = *msg
			return true
		})
		var alert contract.Alert
		if err := json.Unmarshal(first.Data, &alert); err != nil {
			t.Fatalf("alert %s: %v", first.Data, err)
		}
		if alert.User != "demo" || alert.RuleID != demoRule {
			t.Errorf("alert %+v, want one of demo's demo rule", alert)
		}
		t.Logf("first demo alert %s after the banner (rule %s, bar %v)", time.Since(up).Round(100*time.Millisecond), alert.RuleID, alert.BarStart)
		if bar := time.Unix(alert.BarStart, 0); bar.After(time.Now()) {
			t.Errorf("the alert's bar starts at %v, in the future: the simulator should follow the wall clock", bar)
		}
	})

	t.Run("auth", func(t *testing.T) { testAuth(t, ds) })

	t.Run("logs", func(t *testing.T) {
		for _, svc := range []string{"feed", "indicators", "alerts", "control"} {
			b, err := os.ReadFile(filepath.Join(ds.dir, "logs", svc+".log"))
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := bytes.Cut(b, []byte("\n"))
			var rec struct {
				Msg     string `json:"msg"`
				Service string `json:"service"`
			}
			if err := json.Unmarshal(first, &rec); err != nil || rec.Msg == "" || rec.Service != "vigil-"+svc {
				t.Errorf("%s.log starts with %q, want a JSON record of vigil-%s (%v)", svc, first, svc, err)
			}
		}
		// Not on a terminal, the console gets the JSON lines prefixed.
		if !regexp.MustCompile(`(?m)^\[feed\] \{"time":`).MatchString(ds.out.String()) {
			t.Error("the output lacks the feed's JSON lines prefixed by [feed]")
		}
	})

	t.Run("vigilctl top", func(t *testing.T) {
		var out []byte
		testenv.WaitFor(t, time.Minute, "vigilctl top showing the demo user with an alert", func() bool {
			cmd := exec.Command(filepath.Join(ds.bin, "vigilctl"), "top")
			cmd.Env = ds.vigilctlEnv()
			var err error
			out, err = cmd.CombinedOutput()
			return err == nil && regexp.MustCompile(`(?m)^demo\s+running\s+scalper-macdv\s+idle\s+[1-9]\d*\s+BTC-USD`).Match(out)
		})
		for _, want := range []string{
			`(?m)^market: simulator on the wall clock, sim time \S+`,
			`(?m)^USER\s+STATE\s+MODE\s+QUEUE\s+ALERTS/1M\s+FRESHNESS$`,
			`(?m)^SERVICE\s+INSTANCE\s+HOST\s+UPTIME\s+USERS\s+LAG$`,
			`(?m)^vigil-feed\s+\S+\s+\S+\s+\d+s\s+1\s+\S+`,
			`(?m)^vigil-indicators\s+\S+\s+\S+\s+\d+s\s+1\s`,
			`(?m)^vigil-alerts\s+\S+\s+\S+\s+\d+s\s+1\s+\d+ pending$`,
			`(?m)^vigil-control\s+\S+\s+\S+\s+\d+s\s+1\s+-$`,
		} {
			if !regexp.MustCompile(want).Match(out) {
				t.Errorf("vigilctl top output does not match %s\n%s", want, out)
			}
		}
		if bytes.Contains(out, []byte("\x1b[")) {
			t.Errorf("vigilctl top wrote terminal escapes to a pipe:\n%q", out)
		}
	})
}

// testAuth checks that make run's NATS is not open: no credentials are
// refused, the vigil context (admin) is selected and sees the services,
// the demo context commands the demo user (through its account's import)
// and nobody else, and the services run on their own users.
func testAuth(t *testing.T, ds *devStack) {
	if nc, err := nats.Connect(ds.natsURL); err == nil {
		nc.Close()
		t.Fatal("the dev stack's NATS accepted a connection without credentials")
	}
	if b, err := os.ReadFile(filepath.Join(ds.config, "nats", "context.txt")); err != nil || strings.TrimSpace(string(b)) != "vigil" {
		t.Errorf("selected nats context %q (%v), want vigil", b, err)
	}
	if c := ds.context(t, "vigil"); c.User != "admin" || c.Password == "" {
		t.Errorf("context vigil: user %q, want admin with a password", c.User)
	}
	if info, err := os.Stat(filepath.Join(ds.dir, "auth", "passwords.json")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("passwords.json: %v, mode %v; want 0600", err, info)
	}
	denied := make(chan error, 10)
	demo, err := nats.Connect(ds.userURL(t, "demo"), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer demo.Close()
	reply, err := demo.Request("vigil.cmd.demo.resume", []byte(`{}`), 20*time.Second)
	if err != nil {
		t.Fatalf("demo commanding demo: %v", err)
	}
	var ack contract.Ack
	if err := json.Unmarshal(reply.Data, &ack); err != nil || !ack.Accepted {
		t.Errorf("demo's resume: ACK %s (%v)", reply.Data, err)
	}
	if err := demo.Publish("vigil.cmd.admin.pause", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	_ = demo.Flush()
	select {
	case err := <-denied:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("demo commanding another user: %v, want a permission violation", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("demo commanding another user was not refused")
	}
}

func testContext(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
