package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/localstack"
)

// TestTLSContexts: make run TLS=1 generates its certificates once and
// keeps them, runs NATS with TLS and the generated auth, and writes nats
// contexts with the CA and the client certificate, with which a client
// connects (and without the CA does not).
func TestTLSContexts(t *testing.T) {
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	runDir := t.TempDir()
	certs, err := devTLS(filepath.Join(runDir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	first, err := localstack.SerialOf(certs.CA)
	if err != nil {
		t.Fatal(err)
	}
	again, err := devTLS(filepath.Join(runDir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	if second, err := localstack.SerialOf(again.CA); err != nil || second.Cmp(first) != 0 {
		t.Errorf("the second run made a new CA (%v, %v): want the first one kept", second, err)
	}
	auth, err := prepareAuth(root, runDir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := localstack.StartNATS(ctx, localstack.Options{Dir: filepath.Join(runDir, "nats"), NATSConfig: auth.configPath(), TLS: &certs.Server})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	if !strings.HasPrefix(srv.URL(), "tls://") {
		t.Errorf("URL %s, want tls://", srv.URL())
	}
	config := t.TempDir()
	if err := auth.writeContexts(config, srv.URL(), certs); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(config, "context", adminContext+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var c natsContext
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.CA != certs.CA || c.Cert != certs.ClientCert || c.Key != certs.ClientKey || c.URL != srv.URL() {
		t.Fatalf("admin context %+v: want the server's tls URL, the CA and the client certificate", c)
	}
	nc, err := nats.Connect(c.URL, nats.UserInfo(c.User, c.Password), nats.RootCAs(c.CA), nats.ClientCert(c.Cert, c.Key))
	if err != nil {
		t.Fatalf("connect with the admin context: %v", err)
	}
	nc.Close()
	if nc, err := nats.Connect(c.URL, nats.UserInfo(c.User, c.Password)); err == nil {
		nc.Close()
		t.Error("connected without the dev CA: the server's certificate should not be trusted")
	}
}
