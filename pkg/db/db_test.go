package db_test

import (
	"context"
	"errors"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"vigil.dev/pkg/db"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func newPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := db.NewPool(testContext(t), url)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// column is one row of information_schema.columns.
type column struct {
	name     string
	dataType string
	nullable bool
}

func TestMigrateCreatesInitialSchemaFromEmpty(t *testing.T) {
	ctx := testContext(t)
	pool := newPool(t, testenv.EmptyPostgres(t))
	if err := db.Migrate(ctx, pool); err != nil {
		t.Fatalf("Migrate: %v", err)
	}

	want := map[string][]column{
		"users": {
			{"id", "bigint", false},
			{"identity_provider", "text", false},
			{"identity_sub", "text", false},
			{"settings", "jsonb", false},
			{"created_at", "timestamp with time zone", false},
			{"updated_at", "timestamp with time zone", false},
		},
		"exchange_accounts": {
			{"id", "bigint", false},
			{"user_id", "bigint", false},
			{"exchange", "text", false},
			{"label", "text", false},
			{"created_at", "timestamp with time zone", false},
		},
		"command_log": {
			{"id", "text", false},
			{"user_token", "text", false},
			{"user_id", "bigint", true},
			{"command", "text", false},
			{"payload", "jsonb", false},
			{"operator", "text", false},
			{"operator_name", "text", false},
			{"status", "text", false},
			{"priority", "integer", true},
			{"control_instance", "text", true},
			{"result", "jsonb", true},
			{"error", "jsonb", true},
			{"trace_id", "text", true},
			{"accepted_at", "timestamp with time zone", false},
			{"started_at", "timestamp with time zone", true},
			{"finished_at", "timestamp with time zone", true},
		},
		"alert_events": {
			{"id", "text", false},
			{"user_id", "bigint", true},
			{"user_token", "text", true},
			{"rule_id", "text", true},
			{"symbol", "text", true},
			{"timeframe", "text", true},
			{"bar_start", "timestamp with time zone", true},
			{"payload", "jsonb", true},
			{"fired_at", "timestamp with time zone", false},
		},
	}
	for table, wantColumns := range want {
		t.Run(table, func(t *testing.T) {
			rows, err := pool.Query(ctx, `
				SELECT column_name, data_type, is_nullable = 'YES'
				FROM information_schema.columns
				WHERE table_schema = 'public' AND table_name = $1
				ORDER BY ordinal_position`, table)
			if err != nil {
				t.Fatal(err)
			}
			var got []column
			for rows.Next() {
				var c column
				if err := rows.Scan(&c.name, &c.dataType, &c.nullable); err != nil {
					t.Fatal(err)
				}
				got = append(got, c)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			// Later migrations may add columns; these must stay as they are.
			for _, want := range wantColumns {
				if !slices.Contains(got, want) {
					t.Errorf("%s has no column %+v; columns: %v", table, want, got)
				}
			}
		})
	}

	var indexed bool
	err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_indexes
		WHERE tablename = 'command_log' AND indexdef LIKE '%(user_token, accepted_at)%')`).Scan(&indexed)
	if err != nil || !indexed {
		t.Errorf("no index on command_log (user_token, accepted_at): %v", err)
	}
}

func TestMigrateTwiceIsNoop(t *testing.T) {
	ctx := testContext(t)
	pool := testenv.PostgresPool(t) // migrated once already
	if _, err := pool.Exec(ctx, `INSERT INTO users (identity_provider, identity_sub) VALUES ('dev', 'kept')`); err != nil {
		t.Fatal(err)
	}
	versions := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM goose_db_version`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := versions()

	if err := db.Migrate(ctx, pool); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if after := versions(); after != before {
		t.Errorf("goose_db_version rows = %d after a second Migrate, want %d", after, before)
	}
	if _, err := db.NewUsers(pool).UserByToken(ctx, "kept"); err != nil {
		t.Errorf("row inserted before the second Migrate: %v", err)
	}
}

func TestMigrateConcurrently(t *testing.T) {
	ctx := testContext(t)
	url := testenv.EmptyPostgres(t)
	const processes = 3
	pools := make([]*pgxpool.Pool, processes)
	for i := range pools {
		pools[i] = newPool(t, url)
	}

	var wg sync.WaitGroup
	errs := make([]error, processes)
	for i, pool := range pools {
		wg.Go(func() { errs[i] = db.Migrate(ctx, pool) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Migrate %d: %v", i, err)
		}
	}
	var applied int
	err := pools[0].QueryRow(ctx, `SELECT count(*) FROM goose_db_version WHERE version_id = 1 AND is_applied`).Scan(&applied)
	if err != nil || applied != 1 {
		t.Errorf("migration 1 applied %d times (%v), want once", applied, err)
	}
}

func TestNewPoolErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := l.Addr().(*net.TCPAddr).Port
	l.Close()

	cases := []struct {
		name string
		url  string
		want error
	}{
		{"unparsable", "postgres://vigil@127.0.0.1:notaport/vigil", db.ErrBadURL},
		{"unknown parameter value", "postgres://vigil@127.0.0.1/vigil?sslmode=sometimes", db.ErrBadURL},
		{"nothing listening", "postgres://vigil@127.0.0.1:" + strconv.Itoa(closedPort) + "/vigil?sslmode=disable&connect_timeout=2", db.ErrUnreachable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pool, err := db.NewPool(testContext(t), tc.url)
			if pool != nil {
				pool.Close()
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("NewPool(%q) err = %v, want %v", tc.url, err, tc.want)
			}
		})
	}
}
