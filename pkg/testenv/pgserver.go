package testenv

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
)

// PostgresServer is a PostgreSQL server of one test's own, which the test
// may stop (an outage) and start again on the same port and data.
type PostgresServer struct {
	t    testing.TB
	dir  string
	port int
	url  string
	srv  *localstack.Postgres
}

// StartPostgresServer starts a private PostgreSQL server with database
// "vigil" migrated (pkg/db migrations); it is stopped when the test ends.
// Prefer Postgres, which shares one server, unless the test stops it.
func StartPostgresServer(t testing.TB) *PostgresServer {
	t.Helper()
	requireRun(t)
	p := &PostgresServer{t: t, dir: filepath.Join(t.TempDir(), "postgres")}
	p.Start()
	p.port, p.url = p.srv.Port(), p.srv.URL()
	t.Cleanup(func() {
		if p.srv != nil {
			_ = p.srv.Stop()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := db.NewPool(ctx, p.URL())
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer pool.Close()
	if err := db.Migrate(ctx, pool); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

// URL is the URL of database "vigil"; it stays the same across restarts.
func (p *PostgresServer) URL() string { return p.url }

// Start starts the stopped server again, on its port and data.
func (p *PostgresServer) Start() {
	p.t.Helper()
	srv, err := localstack.StartPostgres(context.Background(), localstack.Options{Dir: p.dir, Port: p.port})
	if err != nil {
		p.t.Fatalf("testenv: start PostgreSQL: %v", err)
	}
	p.srv = srv
}

// Stop stops the server (a fast shutdown: sessions are ended).
func (p *PostgresServer) Stop() {
	p.t.Helper()
	if err := p.srv.Stop(); err != nil {
		p.t.Fatalf("testenv: stop PostgreSQL: %v", err)
	}
	p.srv = nil
}

// Kill kills the server and its backends with SIGKILL (a crash: the next
// Start runs crash recovery).
func (p *PostgresServer) Kill() {
	p.t.Helper()
	if err := p.srv.Kill(); err != nil {
		p.t.Fatalf("testenv: kill PostgreSQL: %v", err)
	}
	p.srv = nil
}
