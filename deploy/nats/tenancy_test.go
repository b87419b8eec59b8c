// Package nats holds vigil's NATS server configuration; its test shows
// that the shipped permissions keep tenants apart.
package nats

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/testenv"
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

func connect(t *testing.T, url, user, password, inboxPrefix string, extra ...nats.Option) *client {
	t.Helper()
	c := &client{}
	opts := []nats.Option{nats.UserInfo(user, password), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		c.mu.Lock()
		c.denied = append(c.denied, err.Error())
		c.mu.Unlock()
	})}
	opts = append(opts, extra...)
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
	testenv.WaitFor(t, 30*time.Second, "a publish permission violation", func() bool { return alice.deniedContains("vigil.cmd.bob.pause") })
	if seen("vigil.cmd.bob.pause") {
		t.Fatal("control received alice's command for bob")
	}

	// Alice cannot read bob's results, progress or alerts, nor everyone's;
	// the inboxes she may read are her account's, where bob's replies
	// never go.
	for _, subject := range []string{"vigil.result.bob.>", "vigil.progress.bob.>", "vigil.alert.bob.>", "vigil.result.>", "vigil.cmd.>", ">", "_INBOX.>"} {
		sub, err := alice.SubscribeSync(subject)
		if err != nil {
			t.Fatal(err)
		}
		alice.Flush()
		if subject != "_INBOX.>" {
			testenv.WaitFor(t, 30*time.Second, fmt.Sprintf("subscribe %s denied", subject), func() bool { return alice.deniedContains(subject) })
		}
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

// TestServerStampsTheOperator shows the mechanism control's audit relies
// on: a tenant's command crosses the service import of its account, so
// nats-server replaces whatever Nats-Request-Info the tenant set with the
// account and user it authenticated, and the reply subject is the
// server's (_R_.), answered into the tenant's own account only: a reply
// subject naming bob's inbox reaches nobody.
func TestServerStampsTheOperator(t *testing.T) {
	url := startServer(t).url
	control := connect(t, url, "vigil-control", "control-pw", "")
	type received struct{ info, operator, reply string }
	got := make(chan received, 10)
	if _, err := control.QueueSubscribe("vigil.cmd.*.*", "vigil-control", func(m *nats.Msg) {
		got <- received{m.Header.Get("Nats-Request-Info"), m.Header.Get("Vigil-Operator"), m.Reply}
		_ = m.Respond([]byte(`{"accepted":true}`))
	}); err != nil {
		t.Fatal(err)
	}
	control.Flush()
	bob := connect(t, url, "bob", "bob-pw", "_INBOX_bob")
	bobInbox, err := bob.SubscribeSync("_INBOX_bob.>")
	if err != nil {
		t.Fatal(err)
	}
	bobAny, err := bob.SubscribeSync("_INBOX.>")
	if err != nil {
		t.Fatal(err)
	}
	bob.Flush()

	alice := connect(t, url, "alice", "alice-pw", "")
	forged := nats.Header{}
	forged.Set("Vigil-Operator", "admin")
	forged["Nats-Request-Info"] = []string{`{"acc":"VIGIL","user":"bob"}`, `{"acc":"BOB","user":"admin"}`}
	for _, reply := range []string{"", "_INBOX_bob.x", "_INBOX.bob-wait"} {
		msg := &nats.Msg{Subject: "vigil.cmd.alice.pause", Header: forged, Data: []byte(`{}`)}
		if reply == "" {
			if _, err := alice.RequestMsg(msg, 5*time.Second); err != nil {
				t.Fatalf("alice's forged request: %v", err)
			}
		} else {
			msg.Reply = reply
			if err := alice.PublishMsg(msg); err != nil {
				t.Fatal(err)
			}
		}
		var r received
		select {
		case r = <-got:
		case <-time.After(5 * time.Second):
			t.Fatal("control got no command")
		}
		var ci struct {
			Account string `json:"acc"`
			User    string `json:"user"`
		}
		if err := json.Unmarshal([]byte(r.info), &ci); err != nil || ci.Account != "ALICE" || ci.User != "alice" {
			t.Errorf("reply %q: control got Nats-Request-Info %q, want account ALICE, user alice (%v)", reply, r.info, err)
		}
		if !strings.HasPrefix(r.reply, "_R_.") {
			t.Errorf("reply %q: control got reply subject %q, want the server's _R_.", reply, r.reply)
		}
		if r.operator != "admin" {
			t.Errorf("Vigil-Operator %q: a display header passes unchanged (control records it apart)", r.operator)
		}
	}
	if m, err := bobInbox.NextMsg(300 * time.Millisecond); err == nil {
		t.Errorf("alice's reply subject put %s into bob's inbox", m.Data)
	}
	if m, err := bobAny.NextMsg(0); err == nil {
		t.Errorf("alice's reply subject put %s into bob's _INBOX", m.Data)
	}

	// The admin lives in vigil's account: its requests cross no import, so
	// nothing is stamped and what it sets arrives as set (control ignores
	// it: the reply is the admin's own inbox, not _R_.).
	admin := connect(t, url, "admin", "admin-pw", "")
	if _, err := admin.RequestMsg(&nats.Msg{Subject: "vigil.cmd.bob.pause", Header: nats.Header{"Nats-Request-Info": {`{"acc":"BOB","user":"bob"}`}}}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if r := <-got; strings.HasPrefix(r.reply, "_R_.") {
		t.Errorf("admin's request got reply subject %q: it crossed an import", r.reply)
	}
}
