package testenv_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("parse %q: %v", url, err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestRedisGivesEachCallAnEmptyDatabaseOfItsOwn(t *testing.T) {
	ctx := testContext(t)
	a, b := testenv.Redis(t), testenv.Redis(t)
	if a == b {
		t.Fatalf("two calls returned the same URL %q", a)
	}
	ca, cb := redisClient(t, a), redisClient(t, b)
	if err := ca.Set(ctx, "k", "a", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if n, err := cb.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Errorf("second database has %d keys (%v), want 0", n, err)
	}

	var inner string
	t.Run("flushed at the end of the test", func(t *testing.T) {
		inner = testenv.Redis(t)
		if err := redisClient(t, inner).Set(ctx, "left", "over", 0).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
	})
	if n, err := redisClient(t, inner).DBSize(ctx).Result(); err != nil || n != 0 {
		t.Errorf("database of a finished test has %d keys (%v), want 0", n, err)
	}
}

func TestPostgresGivesEachCallAMigratedDatabaseOfItsOwn(t *testing.T) {
	ctx := testContext(t)
	connect := func(t *testing.T, url string) *pgx.Conn {
		t.Helper()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatalf("connect %s: %v", url, err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		return conn
	}
	a, b := connect(t, testenv.Postgres(t)), connect(t, testenv.Postgres(t))

	if _, err := a.Exec(ctx, `INSERT INTO users (identity_provider, identity_sub) VALUES ('dev', 'a')`); err != nil {
		t.Fatalf("insert into migrated users table: %v", err)
	}
	var n int
	if err := b.QueryRow(ctx, `SELECT count(*) FROM users`).Scan(&n); err != nil || n != 0 {
		t.Errorf("other database has %d users (%v), want 0", n, err)
	}

	var name string
	t.Run("dropped at the end of the test", func(t *testing.T) {
		// The connection stays open: the drop must end it.
		if err := connect(t, testenv.Postgres(t)).QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
			t.Fatal(err)
		}
	})
	var exists bool
	if err := a.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil || exists {
		t.Errorf("database %q of a finished test exists = %v (%v), want dropped", name, exists, err)
	}
}

func TestEmptyPostgresHasNoSchema(t *testing.T) {
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, testenv.EmptyPostgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var tables int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'`).Scan(&tables); err != nil || tables != 0 {
		t.Errorf("public tables = %d (%v), want 0", tables, err)
	}
}

func TestPostgresPoolIsMigrated(t *testing.T) {
	var n int
	if err := testenv.PostgresPool(t).QueryRow(testContext(t), `SELECT count(*) FROM command_log`).Scan(&n); err != nil {
		t.Fatalf("query command_log: %v", err)
	}
}

func jetStreamWorks(t *testing.T, srv *localstack.NATS) {
	t.Helper()
	ctx := testContext(t)
	if !srv.JetStreamEnabled() {
		t.Fatal("JetStream not enabled")
	}
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatalf("connect %s: %v", srv.URL(), err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "TESTENV"})
	if err != nil {
		t.Fatalf("create KV bucket: %v", err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("KV put: %v", err)
	}
}

func TestNATSIsSharedWithJetStream(t *testing.T) {
	first, second := testenv.NATS(t), testenv.NATS(t)
	if first != second {
		t.Errorf("NATS returned two servers: %s and %s", first.URL(), second.URL())
	}
	jetStreamWorks(t, first)
}

func TestStartNATSGivesEachTestAServerStoppedAtItsEnd(t *testing.T) {
	shared := testenv.NATS(t)
	var own *localstack.NATS
	t.Run("own server", func(t *testing.T) {
		own = testenv.StartNATS(t)
		if own.URL() == shared.URL() {
			t.Fatalf("StartNATS returned the shared server %s", own.URL())
		}
		jetStreamWorks(t, own)
	})
	if own.Running() {
		t.Error("the server of a finished test is still running")
	}
	_, err := nats.Connect(own.URL(), nats.Timeout(time.Second))
	if !errors.Is(err, nats.ErrNoServers) {
		t.Errorf("connect to stopped server: err = %v, want ErrNoServers", err)
	}
}
