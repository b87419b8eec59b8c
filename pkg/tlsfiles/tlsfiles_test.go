package tlsfiles_test

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/config"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// TestClientsVerifyTheServers connects vigil's NATS, Redis and PostgreSQL
// clients to real servers that take TLS only: with the CA that signed the
// servers' certificates (and with a client certificate) they work; with
// another CA each is refused with an error that names the variable or
// says the certificate is not trusted.
func TestClientsVerifyTheServers(t *testing.T) {
	srv := testenv.StartTLS(t, testenv.TLSOptions{})
	other, err := localstack.GenerateTLS(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	certs := srv.Certs

	t.Run("right CA", func(t *testing.T) {
		nc, err := natsx.Connect(ctx, config.NATS{URL: srv.NATS.URL(), CA: certs.CA, Cert: certs.ClientCert, Key: certs.ClientKey}, "tls-test", log)
		if err != nil {
			t.Fatalf("nats: %v", err)
		}
		defer nc.Close()
		if !nc.TLSRequired() {
			t.Error("nats: connected without TLS")
		}
		if err := nc.Flush(); err != nil {
			t.Errorf("nats flush: %v", err)
		}
		rdb, err := redisstore.Open(ctx, config.Redis{URL: srv.Redis.URL(), CA: certs.CA, Cert: certs.ClientCert, Key: certs.ClientKey})
		if err != nil {
			t.Fatalf("redis: %v", err)
		}
		defer rdb.Close()
		if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Errorf("redis SET: %v", err)
		}
		pool, err := db.Open(config.Postgres{URL: srv.Postgres.URL() + "&sslcert=" + url.QueryEscape(certs.ClientCert) + "&sslkey=" + url.QueryEscape(certs.ClientKey)})
		if err != nil {
			t.Fatalf("postgres: %v", err)
		}
		defer pool.Close()
		var ssl bool
		var clientDN *string
		if err := pool.QueryRow(ctx, "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl, &clientDN); err != nil || !ssl || clientDN == nil || !strings.Contains(*clientDN, "vigil client") {
			t.Errorf("postgres: ssl %v, client %v, %v; want a TLS session with the client certificate", ssl, clientDN, err)
		}
	})

	t.Run("wrong CA", func(t *testing.T) {
		short, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := natsx.Connect(short, config.NATS{URL: srv.NATS.URL(), CA: other.CA}, "tls-test", log)
		wantRefused(t, "nats", err, "certificate signed by unknown authority")
		_, err = redisstore.Open(ctx, config.Redis{URL: srv.Redis.URL(), CA: other.CA})
		wantRefused(t, "redis", err, "not trusted by REDIS_CA")
		u, err := url.Parse(srv.Postgres.URL())
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Set("sslrootcert", other.CA)
		u.RawQuery = q.Encode()
		pool, err := db.Open(config.Postgres{URL: u.String()})
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		wantRefused(t, "postgres", pool.Ping(ctx), "certificate signed by unknown authority")
	})
}

// TestBadFilesFailAtStart: each missing or unreadable file is refused by
// the configuration, with the variable named.
func TestBadFilesFailAtStart(t *testing.T) {
	dir := t.TempDir()
	certs, err := localstack.GenerateTLS(filepath.Join(dir, "certs"))
	if err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, c := range []struct {
		name string
		v    config.Validator
		want string
	}{
		{"NATS_CA missing", config.NATS{URL: "tls://h:4222", CA: missing, Partitions: 1}, "NATS_CA: open " + missing},
		{"NATS_CA garbage", config.NATS{URL: "tls://h:4222", CA: garbage, Partitions: 1}, "NATS_CA: " + garbage + " holds no PEM certificate"},
		{"NATS_CERT without key", config.NATS{URL: "tls://h:4222", Cert: certs.ClientCert, Partitions: 1}, "NATS_CERT: set, but NATS_KEY is not"},
		{"NATS_KEY not the cert's", config.NATS{URL: "tls://h:4222", Cert: certs.ClientCert, Key: certs.Server.KeyFile, Partitions: 1}, "NATS_CERT/NATS_KEY"},
		{"NATS_PASSWORD_FILE missing", config.NATS{URL: "nats://u@h:4222", PasswordFile: missing, Partitions: 1}, "NATS_PASSWORD_FILE: open " + missing},
		{"NATS_PASSWORD_FILE with a password in the URL", config.NATS{URL: "nats://u:p@h:4222", PasswordFile: garbage, Partitions: 1}, "NATS_PASSWORD_FILE: set, but nats://u:***@h:4222 has a password too"},
		{"REDIS_CA without rediss", config.Redis{URL: "redis://h:6379/0", CA: certs.CA}, "REDIS_URL: redis://h:6379/0 is not rediss://"},
		{"REDIS_CA garbage", config.Redis{URL: "rediss://h:6379/0", CA: garbage}, "REDIS_CA: " + garbage},
		{"REDIS_KEY missing", config.Redis{URL: "rediss://h:6379/0", Cert: certs.ClientCert, Key: missing}, "REDIS_CERT/REDIS_KEY"},
		{"sslrootcert missing", config.Postgres{URL: "postgres://u@h/db?sslmode=verify-full&sslrootcert=" + missing}, "DATABASE_URL: "},
		{"DATABASE_PASSWORD_FILE missing", config.Postgres{URL: "postgres://u@h/db", PasswordFile: missing}, "DATABASE_PASSWORD_FILE: open " + missing},
	} {
		err := c.v.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: Validate() = %v, want one line containing %q", c.name, err, c.want)
		}
	}
}

func wantRefused(t *testing.T, what string, err error, reason string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: connected with a CA that did not sign the server's certificate", what)
		return
	}
	if !strings.Contains(err.Error(), reason) {
		t.Errorf("%s: error %q does not say %q", what, err, reason)
	}
}
