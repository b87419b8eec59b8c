package testenv

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
)

// templateDatabase is migrated once per package; each test database is a
// copy of it.
const templateDatabase = "vigil_template"

// postgresEnv is the package's PostgreSQL server and the admin connection
// that creates and drops the test databases.
type postgresEnv struct {
	server *localstack.Postgres
	admin  *pgxpool.Pool // on database "postgres"

	createMu sync.Mutex // CREATE DATABASE calls run one at a time
	next     atomic.Int64
}

func startPostgres(ctx context.Context, dir string) (*postgresEnv, error) {
	server, err := localstack.StartPostgres(ctx, localstack.Options{Dir: filepath.Join(dir, "postgres")})
	if err != nil {
		return nil, err
	}
	pe := &postgresEnv{server: server}
	if err := pe.prepare(ctx); err != nil {
		_ = pe.stop()
		return nil, err
	}
	return pe, nil
}

// prepare opens the admin pool and creates the migrated template.
func (pe *postgresEnv) prepare(ctx context.Context) error {
	admin, err := pgxpool.New(ctx, pe.server.DatabaseURL("postgres"))
	if err != nil {
		return fmt.Errorf("admin pool: %w", err)
	}
	pe.admin = admin
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+templateDatabase); err != nil {
		return fmt.Errorf("create template database: %w", err)
	}
	pool, err := db.NewPool(ctx, pe.server.DatabaseURL(templateDatabase))
	if err != nil {
		return err
	}
	err = db.Migrate(ctx, pool)
	pool.Close()
	if err != nil {
		return err
	}
	// No session may connect to a template while it is copied.
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+templateDatabase+" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"); err != nil {
		return fmt.Errorf("mark template database: %w", err)
	}
	return nil
}

func (pe *postgresEnv) stop() error {
	if pe.admin != nil {
		pe.admin.Close()
	}
	return pe.server.Stop()
}

// create creates a fresh database copied from template and returns its name.
func (pe *postgresEnv) create(ctx context.Context, template string) (string, error) {
	name := fmt.Sprintf("test_%d", pe.next.Add(1))
	pe.createMu.Lock()
	defer pe.createMu.Unlock()
	sql := fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s",
		pgx.Identifier{name}.Sanitize(), pgx.Identifier{template}.Sanitize())
	if _, err := pe.admin.Exec(ctx, sql); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return name, nil
}

// drop drops database name, ending the sessions still connected to it.
func (pe *postgresEnv) drop(ctx context.Context, name string) error {
	_, err := pe.admin.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// Postgres returns the URL of a database of its own for this test, with the
// schema migrated (pkg/db migrations), dropped when the test ends. The
// server starts on first use.
func Postgres(t testing.TB) string {
	t.Helper()
	return postgresDatabase(t, templateDatabase)
}

// EmptyPostgres is Postgres without the schema: a fresh, empty database, for
// tests of the migrations themselves.
func EmptyPostgres(t testing.TB) string {
	t.Helper()
	return postgresDatabase(t, "template0")
}

// PostgresPool returns a pool (pkg/db.NewPool) on a database of its own for
// this test, migrated; the pool is closed and the database dropped when the
// test ends.
func PostgresPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	url := Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := db.NewPool(ctx, url)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func postgresDatabase(t testing.TB, template string) string {
	t.Helper()
	requireRun(t)
	pe, err := env.postgres.get(startPostgres)
	if err != nil {
		t.Fatalf("testenv: start PostgreSQL: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name, err := pe.create(ctx, template)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := pe.drop(ctx, name); err != nil {
			t.Errorf("testenv: drop database %s: %v", name, err)
		}
	})
	return pe.server.DatabaseURL(name)
}
