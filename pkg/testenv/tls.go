package testenv

import (
	"context"
	"path/filepath"
	"testing"

	"vigil.dev/pkg/localstack"
)

// TLSServers are NATS, Redis and PostgreSQL of one test that take TLS
// connections only, with certificates from localstack.GenerateTLS.
type TLSServers struct {
	// Certs are the CA, the servers' and a client's certificates.
	Certs    *localstack.DevTLS
	NATS     *localstack.NATS
	Redis    *localstack.Redis
	Postgres *localstack.Postgres
}

// TLSOptions changes what StartTLS starts.
type TLSOptions struct {
	// NATSConfig is a nats-server configuration file (users, passwords)
	// the NATS server runs with, as localstack.Options.NATSConfig.
	NATSConfig string
}

// StartTLS generates a CA and certificates into a directory of the test
// and starts a NATS, a Redis and a PostgreSQL server of the test's own
// with TLS only (client certificates verified when sent, optional),
// stopped when the test ends. It works without Run. The servers' URLs are
// tls://, rediss:// and a postgres:// URL with sslmode=verify-full.
func StartTLS(t testing.TB, opts TLSOptions) *TLSServers {
	t.Helper()
	dir := t.TempDir()
	certs, err := localstack.GenerateTLS(filepath.Join(dir, "certs"))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s := &TLSServers{Certs: certs}
	files := &certs.Server
	if s.NATS, err = localstack.StartNATS(ctx, localstack.Options{Dir: filepath.Join(dir, "nats"), TLS: files, NATSConfig: opts.NATSConfig}); err != nil {
		t.Fatalf("testenv: start NATS with TLS: %v", err)
	}
	t.Cleanup(func() { _ = s.NATS.Stop() })
	if s.Redis, err = localstack.StartRedis(ctx, localstack.Options{Dir: filepath.Join(dir, "redis"), TLS: files}); err != nil {
		t.Fatalf("testenv: start Redis with TLS: %v", err)
	}
	t.Cleanup(func() { _ = s.Redis.Stop() })
	if s.Postgres, err = localstack.StartPostgres(ctx, localstack.Options{Dir: filepath.Join(dir, "postgres"), TLS: files}); err != nil {
		t.Fatalf("testenv: start PostgreSQL with TLS: %v", err)
	}
	t.Cleanup(func() { _ = s.Postgres.Stop() })
	return s
}

// Env is the environment of a service on these servers: the URLs and the
// CA that verifies them (NATS_CA, REDIS_CA; DATABASE_URL's sslrootcert).
func (s *TLSServers) Env() []string {
	return []string{
		"NATS_URL=" + s.NATS.URL(), "NATS_CA=" + s.Certs.CA,
		"REDIS_URL=" + s.Redis.URL(), "REDIS_CA=" + s.Certs.CA,
		"DATABASE_URL=" + s.Postgres.URL(),
	}
}
