package db_test

import (
	"context"
	neturl "net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/testenv"
)

// TestPasswordFileIsReadForEveryNewConnection rotates the database
// password under an open pool: the package's PostgreSQL is made to require
// a password (scram-sha-256) of user rot; the pool reads
// DATABASE_PASSWORD_FILE for each new connection, so after ALTER ROLE and
// a new file its new connections log in with the new password, and with
// a wrong one they are refused.
func TestPasswordFileIsReadForEveryNewConnection(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dbURL := testenv.Postgres(t) // the package's server, as its superuser
	admin, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	exec := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec("CREATE ROLE rot LOGIN PASSWORD 'first-pw'")
	// Password authentication for rot, trust for the rest as before
	// (first match), put back at the end.
	var hba string
	if err := admin.QueryRow(ctx, "SHOW hba_file").Scan(&hba); err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hba, append([]byte("host all rot 127.0.0.1/32 scram-sha-256\n"), old...), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(hba, old, 0o600)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if conn, err := pgx.Connect(ctx, dbURL); err == nil {
			_, _ = conn.Exec(ctx, "SELECT pg_reload_conf()")
			_ = conn.Close(ctx)
		}
	})
	exec("SELECT pg_reload_conf()")

	pwFile := filepath.Join(dir, "password")
	write := func(pw string) {
		t.Helper()
		if err := os.WriteFile(pwFile+".tmp", []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(pwFile+".tmp", pwFile); err != nil {
			t.Fatal(err)
		}
	}
	write("first-pw")
	u, err := neturl.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = neturl.User("rot")
	pool, err := db.Open(config.Postgres{URL: u.String(), PasswordFile: pwFile})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var who string
	if err := pool.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "rot" {
		t.Fatalf("with the first password: %q, %v", who, err)
	}

	exec("ALTER ROLE rot PASSWORD 'second-pw'")
	write("second-pw")
	pool.Reset() // every connection from now on is a new one
	if err := pool.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil {
		t.Fatalf("a new connection after the rotation: %v", err)
	}
	write("wrong-pw")
	pool.Reset()
	err = pool.QueryRow(ctx, "SELECT current_user").Scan(&who)
	if err == nil || !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("a new connection with a wrong password file: %v, want password authentication failed", err)
	}
}
