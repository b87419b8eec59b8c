package localstack_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"vigil.dev/pkg/localstack"
)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func startRedis(t *testing.T, opts localstack.Options) *localstack.Redis {
	t.Helper()
	r, err := localstack.StartRedis(testContext(t), opts)
	if err != nil {
		t.Fatalf("StartRedis: %v", err)
	}
	t.Cleanup(func() { _ = r.Stop() })
	return r
}

func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("parse redis URL %q: %v", url, err)
	}
	client := redis.NewClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func TestStartRedisAnswersAndStops(t *testing.T) {
	ctx := testContext(t)
	r := startRedis(t, localstack.Options{Dir: t.TempDir()})

	if want := fmt.Sprintf("redis://127.0.0.1:%d/0", r.Port()); r.URL() != want {
		t.Errorf("URL() = %q, want %q", r.URL(), want)
	}
	client := redisClient(t, r.URL())
	if err := client.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := client.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v; want v", got, err)
	}
	if got := client.ConfigGet(ctx, "save").Val()["save"]; got != "" {
		t.Errorf("save = %q without Persist, want empty", got)
	}

	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := net.DialTimeout("tcp", r.Addr(), time.Second); err == nil {
		t.Errorf("%s still accepts connections after Stop", r.Addr())
	}
}

func TestStartRedisPersistKeepsDataAcrossRestart(t *testing.T) {
	ctx := testContext(t)
	dir := t.TempDir()

	first := startRedis(t, localstack.Options{Dir: dir, Persist: true})
	if err := redisClient(t, first.URL()).Set(ctx, "kept", "yes", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if err := first.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}

	second := startRedis(t, localstack.Options{Dir: dir, Persist: true})
	got, err := redisClient(t, second.URL()).Get(ctx, "kept").Result()
	if err != nil || got != "yes" {
		t.Fatalf("GET after restart = %q, %v; want yes", got, err)
	}
}

func TestStartRedisDatabases(t *testing.T) {
	ctx := testContext(t)
	r := startRedis(t, localstack.Options{Dir: t.TempDir(), RedisDatabases: 64})
	if err := redisClient(t, r.DatabaseURL(63)).Ping(ctx).Err(); err != nil {
		t.Fatalf("PING on database 63 of 64: %v", err)
	}
	if err := redisClient(t, r.DatabaseURL(64)).Ping(ctx).Err(); err == nil {
		t.Fatalf("PING on database 64 of 64 succeeded, want an error")
	}
}

func TestStartRedisFixedPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	_, err = localstack.StartRedis(testContext(t), localstack.Options{Dir: t.TempDir(), Port: port})
	if !errors.Is(err, localstack.ErrExited) {
		t.Fatalf("StartRedis on taken port %d: err = %v, want ErrExited", port, err)
	}
}

func TestStartRedisMissingBinarySaysHowToInstall(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := localstack.StartRedis(testContext(t), localstack.Options{Dir: t.TempDir()})
	if !errors.Is(err, localstack.ErrMissingBinary) {
		t.Fatalf("err = %v, want ErrMissingBinary", err)
	}
	for _, want := range []string{"make deps", "apt-get install -y redis-server"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestInvalidOptions(t *testing.T) {
	starts := map[string]func(context.Context, localstack.Options) error{
		"redis": func(ctx context.Context, o localstack.Options) error {
			_, err := localstack.StartRedis(ctx, o)
			return err
		},
		"postgres": func(ctx context.Context, o localstack.Options) error {
			_, err := localstack.StartPostgres(ctx, o)
			return err
		},
		"nats": func(ctx context.Context, o localstack.Options) error {
			_, err := localstack.StartNATS(ctx, o)
			return err
		},
	}
	cases := []struct {
		name string
		opts localstack.Options
		want string
	}{
		{"no dir", localstack.Options{}, "Dir is required"},
		{"negative port", localstack.Options{Dir: "x", Port: -2}, "Port -2"},
		{"port too big", localstack.Options{Dir: "x", Port: 70000}, "Port 70000"},
		{"negative databases", localstack.Options{Dir: "x", RedisDatabases: -1}, "RedisDatabases -1"},
	}
	for server, start := range starts {
		for _, tc := range cases {
			t.Run(server+"/"+tc.name, func(t *testing.T) {
				err := start(testContext(t), tc.opts)
				if !errors.Is(err, localstack.ErrInvalidOptions) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want ErrInvalidOptions mentioning %q", err, tc.want)
				}
			})
		}
	}
}

func TestStartPostgresReusesDataOnSecondStart(t *testing.T) {
	ctx := testContext(t)
	dir := t.TempDir()

	first, err := localstack.StartPostgres(ctx, localstack.Options{Dir: dir})
	if err != nil {
		t.Fatalf("StartPostgres: %v", err)
	}
	t.Cleanup(func() { _ = first.Stop() })
	wantURL := regexp.MustCompile(`^postgres://vigil@127\.0\.0\.1:\d+/vigil\?sslmode=disable$`)
	if !wantURL.MatchString(first.URL()) || !strings.Contains(first.URL(), ":"+strconv.Itoa(first.Port())+"/") {
		t.Errorf("URL() = %q, want postgres://vigil@127.0.0.1:%d/vigil?sslmode=disable", first.URL(), first.Port())
	}
	conn := connect(t, first.URL())
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('yes')"); err != nil {
		t.Fatalf("create table: %v", err)
	}
	_ = conn.Close(ctx)
	versionFile := filepath.Join(dir, "data", "PG_VERSION")
	before, err := os.Stat(versionFile)
	if err != nil {
		t.Fatalf("cluster not in Dir/data: %v", err)
	}
	if err := first.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(first.Port())), time.Second); err == nil {
		t.Errorf("port %d still accepts connections after Stop", first.Port())
	}

	second, err := localstack.StartPostgres(ctx, localstack.Options{Dir: dir})
	if err != nil {
		t.Fatalf("second StartPostgres: %v", err)
	}
	t.Cleanup(func() { _ = second.Stop() })
	after, err := os.Stat(versionFile)
	if err != nil || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("PG_VERSION changed on second start (initdb ran again): %v", err)
	}
	var got string
	if err := connect(t, second.URL()).QueryRow(ctx, "SELECT v FROM kept").Scan(&got); err != nil || got != "yes" {
		t.Fatalf("row after restart = %q, %v; want yes", got, err)
	}
}

func TestStartPostgresDatabaseURL(t *testing.T) {
	ctx := testContext(t)
	pg, err := localstack.StartPostgres(ctx, localstack.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("StartPostgres: %v", err)
	}
	t.Cleanup(func() { _ = pg.Stop() })

	var name string
	if err := connect(t, pg.DatabaseURL("postgres")).QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil || name != "postgres" {
		t.Fatalf("current_database() via DatabaseURL(postgres) = %q, %v", name, err)
	}
	var fsync string
	if err := connect(t, pg.URL()).QueryRow(ctx, "SHOW fsync").Scan(&fsync); err != nil || fsync != "off" {
		t.Errorf("fsync = %q, %v without Persist; want off", fsync, err)
	}
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testContext(t), url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func TestStartNATSWithJetStream(t *testing.T) {
	ctx := testContext(t)
	dir := t.TempDir()
	srv, err := localstack.StartNATS(ctx, localstack.Options{Dir: dir})
	if err != nil {
		t.Fatalf("StartNATS: %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	if !srv.JetStreamEnabled() {
		t.Fatal("JetStream is not enabled")
	}
	if !strings.HasPrefix(srv.URL(), "nats://127.0.0.1:") {
		t.Errorf("URL() = %q, want nats://127.0.0.1:<port>", srv.URL())
	}

	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	if _, err := js.Publish(ctx, "t.x", []byte("hello")); err != nil {
		t.Fatalf("publish: %v", err)
	}
	info, err := stream.Info(ctx)
	if err != nil || info.State.Msgs != 1 {
		t.Fatalf("stream info: %+v, %v; want 1 message", info, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "jetstream")); err != nil {
		t.Errorf("JetStream store not under Dir: %v", err)
	}

	if err := srv.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if srv.Running() {
		t.Error("server still running after Stop")
	}
}

func TestStartNATSFixedPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	_, err = localstack.StartNATS(testContext(t), localstack.Options{Dir: t.TempDir(), Port: port})
	if !errors.Is(err, localstack.ErrInvalidOptions) || !strings.Contains(err.Error(), strconv.Itoa(port)) {
		t.Fatalf("StartNATS on taken port: err = %v, want ErrInvalidOptions naming port %d", err, port)
	}
}
