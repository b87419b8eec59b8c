package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/localstack"
)

// TestAuthConfig runs NATS with the configuration make run generates: the
// passwords are generated once and kept, every user logs in with its own,
// the services get deploy/nats's permissions (vigil-feed may not command
// or write results), the demo tenant commands only itself through its
// account's import, and the contexts point at the server.
func TestAuthConfig(t *testing.T) {
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	runDir := t.TempDir()
	auth, err := prepareAuth(root, runDir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := prepareAuth(root, runDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range authUsers() {
		if auth.passwords[u] == "" || again.passwords[u] != auth.passwords[u] {
			t.Errorf("password of %s: %q then %q, want one kept password", u, auth.passwords[u], again.passwords[u])
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := localstack.StartNATS(ctx, localstack.Options{Dir: filepath.Join(runDir, "nats"), NATSConfig: auth.configPath()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })

	connect := func(user string) (*nats.Conn, chan error) {
		denied := make(chan error, 10)
		nc, err := nats.Connect(auth.url(srv.URL(), user), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err }))
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		t.Cleanup(nc.Close)
		return nc, denied
	}
	for _, u := range authUsers() {
		connect(u)
	}
	if nc, err := nats.Connect(srv.URL()); err == nil {
		nc.Close()
		t.Error("connected without credentials")
	}

	control, _ := connect("vigil-control")
	got := make(chan *nats.Msg, 1)
	if _, err := control.Subscribe("vigil.cmd.*.*", func(m *nats.Msg) { got <- m; _ = m.Respond([]byte(`{"accepted":true}`)) }); err != nil {
		t.Fatal(err)
	}
	_ = control.Flush()
	demo, demoDenied := connect("demo")
	if _, err := demo.Request("vigil.cmd.demo.pause", []byte(`{}`), 10*time.Second); err != nil {
		t.Fatalf("demo commanding itself: %v", err)
	}
	if m := <-got; m.Header.Get("Nats-Request-Info") == "" {
		t.Error("demo's command reached control without the server's Nats-Request-Info")
	}
	feed, feedDenied := connect("vigil-feed")
	for _, c := range []struct {
		nc     *nats.Conn
		denied chan error
		who    string
		subj   string
	}{
		{demo, demoDenied, "demo", "vigil.cmd.admin.pause"},
		{feed, feedDenied, "vigil-feed", "vigil.cmd.demo.pause"},
		{feed, feedDenied, "vigil-feed", "vigil.result.demo.x"},
	} {
		if err := c.nc.Publish(c.subj, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		_ = c.nc.Flush()
		select {
		case err := <-c.denied:
			if !errors.Is(err, nats.ErrPermissionViolation) {
				t.Errorf("%s publishing %s: %v", c.who, c.subj, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s publishing %s was not refused", c.who, c.subj)
		}
	}

	config := t.TempDir()
	if err := auth.writeContexts(config, srv.URL(), nil); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(config, "context.txt")); err != nil || string(b) != adminContext {
		t.Errorf("context.txt = %q (%v)", b, err)
	}
}
