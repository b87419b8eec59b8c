package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/service"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/daemon"
	"vigil.dev/services/control/internal/desired"
	"vigil.dev/services/control/internal/testpeer"
)

// spans and metrics record what every test's instances emit.
var (
	spans   = tracetest.NewInMemoryExporter()
	metrics = sdkmetric.NewManualReader()
)

func TestMain(m *testing.M) {
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans)))
	otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(metrics)))
	otel.SetTextMapPropagator(propagation.TraceContext{})
	os.Exit(testenv.Run(m))
}

// waitTimeout bounds every wait for a condition.
const waitTimeout = 20 * time.Second

// validSettings is a users.settings document that validates.
const validSettings = `{"mode":"position-monitor","symbols":["BTC-USD","ETH-USD"],
 "indicators":{"ema":[20,50]},
 "rules":{"position-monitor":[{"id":"r1","symbol":"BTC-USD","timeframe":"1h","kind":"threshold","indicator":"rsi_14","op":"above","value":70}]}}`

// env is one test's world: its own NATS server, database and Redis
// database, stand-ins for the three services, and control instances.
type env struct {
	t   testing.TB
	url string
	// dbURL and redisURL are the database and Redis database the control
	// instances use.
	dbURL    string
	redisURL string
	nc       *nats.Conn
	js       jetstream.JetStream
	pool     *pgxpool.Pool
	rdb      *redis.Client
	rec      *testpeer.Recorder
	peers    map[contract.Svc][]*testpeer.Peer
	users    map[string]user
}

type user struct{ id, exchange int64 }

// newEnv starts the world with instances stand-ins of each service (the
// first of each owns every user) and the users alice and bob.
func newEnv(t testing.TB, instances int) *env {
	t.Helper()
	return newEnvOn(t, instances, testenv.Postgres(t))
}

// newEnvOnOwnPostgres is newEnv with one instance of each service, on a
// private PostgreSQL server that the test may stop and start.
func newEnvOnOwnPostgres(t testing.TB) (*env, *testenv.PostgresServer) {
	t.Helper()
	pg := testenv.StartPostgresServer(t)
	return newEnvOn(t, 1, pg.URL()), pg
}

// newEnvOn is newEnv on the database at dbURL.
func newEnvOn(t testing.TB, instances int, dbURL string) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := testenv.StartNATS(t)
	e := &env{t: t, url: srv.URL(), dbURL: dbURL, redisURL: testenv.Redis(t), rec: &testpeer.Recorder{}, peers: map[contract.Svc][]*testpeer.Peer{}, users: map[string]user{}}
	var err error
	if e.pool, err = db.NewPool(ctx, dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.pool.Close)
	if e.nc, err = nats.Connect(e.url, nats.Name("test operator")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.nc.Close)
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
	if err := natsx.EnsureStreams(ctx, e.js); err != nil {
		t.Fatal(err)
	}
	if e.rdb, err = redisstore.NewClient(ctx, e.redisURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.rdb.Close() })
	for _, token := range []string{"alice", "bob"} {
		e.addUser(token, validSettings)
	}
	for _, svc := range []contract.Svc{contract.SvcFeed, contract.SvcIndicators, contract.SvcAlerts} {
		for i := range instances {
			e.peers[svc] = append(e.peers[svc], testpeer.Start(t, e.url, svc, e.rec, testpeer.Options{
				Owner: i == 0, BackfillPages: 2,
				GapFilled: contract.GapFill{"BTC-USD": {contract.TF1m: 3}},
			}))
		}
	}
	return e
}

func (e *env) addUser(token, settings string) user {
	e.t.Helper()
	uid, ex, err := db.NewUsers(e.pool).SeedUser(context.Background(), "test", token, json.RawMessage(settings), "coinbase")
	if err != nil {
		e.t.Fatal(err)
	}
	e.users[token] = user{uid, ex}
	return e.users[token]
}

// testSettings are control settings for fast tests.
func testSettings() daemon.Settings {
	return daemon.Settings{
		QueueLimit: 32, StepTimeout: 2 * time.Second, BackfillTimeout: 20 * time.Second, BackfillBars: 1000,
		PingWait: 500 * time.Millisecond, PingStall: 50 * time.Millisecond, SweepInterval: 200 * time.Millisecond,
		MaxJobs: 2, MaxSymbols: 50, MaxRules: 200, UserCacheTTL: time.Minute,
	}
}

// controlInstance is a control instance of a test.
type controlInstance struct {
	*daemon.Instance
	rt     *service.Runtime
	cancel context.CancelFunc
	once   sync.Once
}

// Kill stops the instance like a crash: its context ends and its
// connection closes, nothing is written any more.
func (c *controlInstance) Kill() {
	c.once.Do(func() {
		c.cancel()
		c.rt.NC.Close()
	})
}

// Stop shuts the instance down cleanly, as at the end of the test.
func (c *controlInstance) Stop(t testing.TB) {
	c.once.Do(func() {
		if err := c.rt.Shutdown(); err != nil {
			t.Errorf("shutdown %s: %v", c.rt.Instance, err)
		}
		c.cancel()
	})
}

// config is the configuration of control instance name on the env.
func (e *env) config(name string, s daemon.Settings) daemon.Config {
	return daemon.Config{
		NATS:     config.NATS{URL: e.url, Partitions: config.DefaultPartitions},
		Service:  config.Service{Instance: name, LogLevel: "debug", ShutdownTimeout: 10 * time.Second},
		Redis:    config.Redis{URL: e.redisURL},
		Postgres: config.Postgres{URL: e.dbURL},
		Settings: s,
	}
}

// startControl starts a control instance named name, as Serve does but
// with a context whose end kills it (Kill) and membership timings for
// tests.
func (e *env) startControl(name string, s daemon.Settings, serviceTimeout time.Duration) *controlInstance {
	e.t.Helper()
	cfg := e.config(name, s)
	ctx, cancel := context.WithCancel(context.Background())
	rt, err := service.Boot(ctx, contract.ServiceControl, cfg.Service, cfg.NATS, &cfg, testLog(e.t, name))
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	var inst *daemon.Instance
	if err := rt.Launch(ctx, func(ctx context.Context) (err error) {
		inst, err = daemon.Start(ctx, cfg, rt, daemon.Options{
			Membership:     membership.Options{Interval: 200 * time.Millisecond, Timeout: time.Second},
			ServiceTimeout: serviceTimeout,
		})
		return err
	}); err != nil {
		cancel()
		e.t.Fatal(err)
	}
	c := &controlInstance{Instance: inst, rt: rt, cancel: cancel}
	e.t.Cleanup(func() { c.Stop(e.t) })
	return c
}

// testLog is a log that is printed when the test fails.
func testLog(t testing.TB, name string) io.Writer {
	var mu sync.Mutex
	var buf bytes.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			mu.Lock()
			t.Logf("log of %s:\n%s", name, buf.String())
			mu.Unlock()
		}
	})
	return lockedWriter{&mu, &buf}
}

type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// send sends a command and returns its ACK and the reply headers.
func (e *env) send(token, command, body string, hdr nats.Header) (contract.Ack, nats.Header) {
	e.t.Helper()
	msg := &nats.Msg{Subject: "vigil.cmd." + token + "." + command, Data: []byte(body), Header: hdr}
	resp, err := e.nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		e.t.Fatalf("request %s: %v", msg.Subject, err)
	}
	var ack contract.Ack
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		e.t.Fatalf("ack of %s is not JSON: %v: %s", msg.Subject, err, resp.Data)
	}
	return ack, resp.Header
}

// accept sends a command that must be accepted and returns its ACK.
func (e *env) accept(token, command, body string) contract.Ack {
	e.t.Helper()
	ack, _ := e.send(token, command, body, nil)
	if !ack.Accepted || ack.ID == "" {
		e.t.Fatalf("%s %s %s: not accepted: %+v %+v", token, command, body, ack, ack.Error)
	}
	return ack
}

// result waits for the result of command id in VIGIL_RESULTS.
func (e *env) result(token, id string) contract.Result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	stream, err := e.js.Stream(ctx, contract.StreamResults)
	if err != nil {
		e.t.Fatal(err)
	}
	var r contract.Result
	testenv.WaitFor(e.t, waitTimeout, "result of "+id, func() bool {
		msg, err := stream.GetLastMsgForSubject(ctx, contract.ResultSubject(token, id))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return false
		}
		if err != nil {
			e.t.Fatalf("get result %s: %v", id, err)
		}
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			e.t.Fatalf("result %s is not JSON: %v", id, err)
		}
		return true
	})
	return r
}

// resultCount is how many results of user are in the stream.
func (e *env) resultCount(token string) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := e.js.Stream(ctx, contract.StreamResults)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter("vigil.result."+token+".>"))
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, c := range info.State.Subjects {
		n += int(c)
	}
	return n
}

// progress returns the progress events of command id.
func (e *env) progress(token, id string) []contract.Progress {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cons, err := e.js.OrderedConsumer(ctx, contract.StreamResults, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{contract.ProgressSubject(token, id)}})
	if err != nil {
		e.t.Fatal(err)
	}
	var out []contract.Progress
	for {
		msgs, err := cons.FetchNoWait(100)
		if err != nil {
			e.t.Fatal(err)
		}
		n := 0
		for m := range msgs.Messages() {
			n++
			var p contract.Progress
			if err := json.Unmarshal(m.Data(), &p); err != nil {
				e.t.Fatal(err)
			}
			out = append(out, p)
		}
		if n == 0 {
			return out
		}
	}
}

// logRow is a command_log row.
type logRow struct {
	Status, Operator, OperatorName, Instance, Command string
	Published                                         bool
	Started, Finished                                 *time.Time
}

func (e *env) logRow(id string) (logRow, bool) {
	e.t.Helper()
	var r logRow
	err := e.pool.QueryRow(context.Background(), `
		SELECT status, operator, operator_name, coalesce(control_instance, ''), command, published_at IS NOT NULL, started_at, finished_at
		FROM command_log WHERE id = $1`, id).Scan(&r.Status, &r.Operator, &r.OperatorName, &r.Instance, &r.Command, &r.Published, &r.Started, &r.Finished)
	if err != nil {
		return r, false
	}
	return r, true
}

// logCount counts command_log rows.
func (e *env) logCount() int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM command_log`).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// state reads the desired state of token.
func (e *env) state(token string) desired.Entry {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := desired.Open(ctx, e.js)
	if err != nil {
		e.t.Fatal(err)
	}
	st, err := s.Get(ctx, token)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// callsOf returns the calls of command id for verb.
func (e *env) callsOf(id string, verb contract.Verb) []testpeer.Call {
	var out []testpeer.Call
	for _, c := range e.rec.For(id) {
		if c.Verb == verb {
			out = append(out, c)
		}
	}
	return out
}

// checkRecomputedOnly checks that a stopped force-backfill recomputed
// BTC-USD's tf series once on each of the three indicators instances and
// nothing else.
func checkRecomputedOnly(t *testing.T, calls []testpeer.Call, tf contract.Timeframe) {
	t.Helper()
	if len(calls) != 3 {
		t.Errorf("%d recompute calls, want one per indicators instance (3): %+v", len(calls), calls)
	}
	for _, c := range calls {
		var args contract.RecomputeArgs
		if err := json.Unmarshal(c.Args, &args); err != nil || args.Series.Symbol != "BTC-USD" || args.Series.Timeframe != tf {
			t.Errorf("recompute of %s (%v), want BTC-USD %s only", c.Args, err, tf)
		}
	}
}

// decode unmarshals a result object.
func decode[T any](t testing.TB, raw json.RawMessage) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	return v
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// publishedRow waits until command id's result is marked published and
// returns its command_log row.
func (e *env) publishedRow(id string) logRow {
	e.t.Helper()
	var row logRow
	testenv.WaitFor(e.t, waitTimeout, "result of "+id+" marked published", func() bool {
		var ok bool
		row, ok = e.logRow(id)
		return ok && row.Published
	})
	return row
}
