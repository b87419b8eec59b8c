// Package nats holds vigil's NATS server configuration; its test shows
// that the shipped permissions keep tenants apart.
package nats

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

var passwords = map[string]string{
	"VIGIL_NATS_ADMIN_PASSWORD":      "admin-pw",
	"VIGIL_NATS_FEED_PASSWORD":       "feed-pw",
	"VIGIL_NATS_INDICATORS_PASSWORD": "indicators-pw",
	"VIGIL_NATS_ALERTS_PASSWORD":     "alerts-pw",
	"VIGIL_NATS_CONTROL_PASSWORD":    "control-pw",
	"VIGIL_NATS_ALICE_PASSWORD":      "alice-pw",
	"VIGIL_NATS_BOB_PASSWORD":        "bob-pw",
}

// server is vigil.conf running on a random port with its store in a
// temp dir.
type server struct {
	url string
	log *violationLog
}

// violations are the permission violations the server logged.
func (s server) violations() []string { return s.log.lines() }

// violationLog is a nats-server logger that keeps the permission
// violations.
type violationLog struct {
	mu    sync.Mutex
	found []string
}

func (l *violationLog) keep(format string, v ...any) {
	line := fmt.Sprintf(format, v...)
	if strings.Contains(line, " Violation - ") {
		l.mu.Lock()
		l.found = append(l.found, line)
		l.mu.Unlock()
	}
}

func (l *violationLog) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.found)
}

func (l *violationLog) Noticef(format string, v ...any) { l.keep(format, v...) }
func (l *violationLog) Warnf(format string, v ...any)   { l.keep(format, v...) }
func (l *violationLog) Fatalf(format string, v ...any)  { l.keep(format, v...) }
func (l *violationLog) Errorf(format string, v ...any)  { l.keep(format, v...) }
func (l *violationLog) Debugf(format string, v ...any)  { l.keep(format, v...) }
func (l *violationLog) Tracef(format string, v ...any)  { l.keep(format, v...) }

// startServer runs vigil.conf on a random port with its store in a temp dir.
func startServer(t *testing.T) server {
	t.Helper()
	for k, v := range passwords {
		t.Setenv(k, v)
	}
	opts, err := natsserver.ProcessConfigFile("vigil.conf")
	if err != nil {
		t.Fatal(err)
	}
	opts.Port = -1
	opts.StoreDir = t.TempDir()
	opts.NoSigs = true
	srv, err := natsserver.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	log := &violationLog{}
	srv.SetLoggerV2(log, false, false, false)
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(srv.Shutdown)
	return server{url: srv.ClientURL(), log: log}
}

// client connects as user and records permission errors.
type client struct {
	*nats.Conn
	mu     sync.Mutex
	denied []string
}

func connect(t *testing.T, url, user, password, inboxPrefix string) *client {
	t.Helper()
	c := &client{}
	opts := []nats.Option{nats.UserInfo(user, password), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		c.mu.Lock()
		c.denied = append(c.denied, err.Error())
		c.mu.Unlock()
	})}
	if inboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(inboxPrefix))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	c.Conn = nc
	return c
}

func (c *client) deniedContains(subject string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range c.denied {
		if strings.Contains(d, subject) {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTenantsAreIsolated(t *testing.T) {
	url := startServer(t).url
	// A stand-in control: answers every command and publishes its result.
	control := connect(t, url, "vigil-control", "control-pw", "")
	var mu sync.Mutex
	var commands []string
	if _, err := control.QueueSubscribe("vigil.cmd.*.*", "vigil-control", func(m *nats.Msg) {
		mu.Lock()
		commands = append(commands, m.Subject)
		mu.Unlock()
		user := strings.Split(m.Subject, ".")[2]
		_ = m.Respond([]byte(`{"accepted":true}`))
		_ = control.Publish("vigil.result."+user+".c1", []byte(`{"status":"succeeded"}`))
	}); err != nil {
		t.Fatal(err)
	}
	control.Flush()
	seen := func(subject string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range commands {
			if c == subject {
				return true
			}
		}
		return false
	}

	alice := connect(t, url, "alice", "alice-pw", "_INBOX_alice")
	aliceResults, err := alice.SubscribeSync("vigil.result.alice.>")
	if err != nil {
		t.Fatal(err)
	}
	alice.Flush()

	// Alice commands herself.
	if _, err := alice.Request("vigil.cmd.alice.pause", []byte(`{}`), 5*time.Second); err != nil {
		t.Fatalf("alice cannot command herself: %v", err)
	}
	if _, err := aliceResults.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("alice does not get her result: %v", err)
	}

	// Alice cannot command bob: the server refuses the publish and control never sees it.
	if _, err := alice.Request("vigil.cmd.bob.pause", []byte(`{}`), 500*time.Millisecond); !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("alice commanding bob: want a timeout or permission error, got %v", err)
	}
	waitFor(t, "a publish permission violation", func() bool { return alice.deniedContains("vigil.cmd.bob.pause") })
	if seen("vigil.cmd.bob.pause") {
		t.Fatal("control received alice's command for bob")
	}

	// Alice cannot read bob's results, progress or alerts, nor everyone's.
	for _, subject := range []string{"vigil.result.bob.>", "vigil.progress.bob.>", "vigil.alert.bob.>", "vigil.result.>", "vigil.cmd.>", "_INBOX.>"} {
		sub, err := alice.SubscribeSync(subject)
		if err != nil {
			t.Fatal(err)
		}
		alice.Flush()
		waitFor(t, fmt.Sprintf("subscribe %s denied", subject), func() bool { return alice.deniedContains(subject) })
		bob := connect(t, url, "bob", "bob-pw", "_INBOX_bob")
		if _, err := bob.Request("vigil.cmd.bob.resume", []byte(`{}`), 5*time.Second); err != nil {
			t.Fatalf("bob cannot command himself: %v", err)
		}
		if m, err := sub.NextMsg(200 * time.Millisecond); err == nil {
			t.Fatalf("alice read %s on %s", m.Data, m.Subject)
		}
	}

	// The admin may command every user.
	admin := connect(t, url, "admin", "admin-pw", "")
	for _, user := range []string{"alice", "bob"} {
		if _, err := admin.Request("vigil.cmd."+user+".pause", []byte(`{}`), 5*time.Second); err != nil {
			t.Fatalf("admin cannot command %s: %v", user, err)
		}
	}
	// A wrong password is refused.
	if nc, err := nats.Connect(url, nats.UserInfo("alice", "bob-pw")); err == nil {
		nc.Close()
		t.Fatal("alice connected with bob's password")
	}
}
