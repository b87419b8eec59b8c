package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/localstack"
)

// TestDevTenants runs the dev stack's NATS with VIGIL_DEV_TENANTS=carol and
// VIGIL_TENANT_MAX_CONNECTIONS=2: carol gets an account of her own (with a
// generated password) that may command only herself, and her third
// connection is refused by the account limit.
func TestDevTenants(t *testing.T) {
	t.Setenv("VIGIL_DEV_TENANTS", "carol, bad token,demo")
	t.Setenv("VIGIL_TENANT_MAX_CONNECTIONS", "2")
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	runDir := t.TempDir()
	auth, err := prepareAuth(root, runDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := devTenants(func(string) string { return "carol, bad token,demo" }); strings.Join(got, ",") != "demo,carol" {
		t.Errorf("tenants %v, want demo,carol", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := localstack.StartNATS(ctx, localstack.Options{Dir: filepath.Join(runDir, "nats"), NATSConfig: auth.configPath()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	denied := make(chan error, 10)
	var conns []*nats.Conn
	for range 2 {
		nc, err := nats.Connect(auth.url(srv.URL(), "carol"), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err }))
		if err != nil {
			t.Fatalf("carol: %v", err)
		}
		t.Cleanup(nc.Close)
		conns = append(conns, nc)
	}
	if nc, err := nats.Connect(auth.url(srv.URL(), "carol"), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Error("carol's third connection was accepted (VIGIL_TENANT_MAX_CONNECTIONS=2)")
	} else if !strings.Contains(strings.ToLower(err.Error()), "maximum account active connections exceeded") {
		t.Errorf("third connection: %v", err)
	}
	if err := conns[0].Publish("vigil.cmd.demo.pause", nil); err != nil {
		t.Fatal(err)
	}
	_ = conns[0].Flush()
	select {
	case err := <-denied:
		if !strings.Contains(err.Error(), "vigil.cmd.demo.pause") {
			t.Errorf("denied: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("carol may command demo")
	}
}
