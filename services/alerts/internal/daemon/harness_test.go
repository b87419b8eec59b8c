package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/service"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/alerts/internal/metrics"
	"vigil.dev/services/alerts/internal/metrics/metricstest"
	"vigil.dev/services/alerts/internal/snapshots"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// waitTimeout bounds every wait of these tests.
const waitTimeout = 30 * time.Second

// base is the start of bar 0 of every test series: 2026-01-01T00:00:00Z.
const base = int64(1_767_225_600)

// clock is the instances' clock, moved by the test.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// testLog passes the instances' logs to the test output until the test
// ends (instances killed by a test may log a little later).
// It also keeps every line, for tests of what is logged.
type testLog struct {
	mu   sync.Mutex
	w    io.Writer
	all  bytes.Buffer
	done bool
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all.Write(p)
	if l.done {
		return len(p), nil
	}
	return l.w.Write(p)
}

// String is everything logged so far.
func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all.String()
}

// env is one test's NATS server, Redis database and Postgres database, the
// test's own connections to them, and the instances it started.
type env struct {
	t       testing.TB
	log     *testLog
	clock   *clock
	cfg     Config
	metrics *metrics.Metrics
	counted *metricstest.Reader
	nc      *nats.Conn
	js      jetstream.JetStream
	store   *redisstore.Store
	pool    *pgxpool.Pool

	mu        sync.Mutex
	instances []*instance
	// published is the stream sequence of the latest update published
	// for each user (settle waits until its owner was delivered it).
	published map[string]uint64
}

func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvOn(t, testenv.Postgres(t))
}

// newEnvOn is newEnv with the Postgres database at databaseURL.
func newEnvOn(t testing.TB, databaseURL string) *env {
	t.Helper()
	log := &testLog{w: t.Output()}
	t.Cleanup(func() {
		log.mu.Lock()
		log.done = true
		log.mu.Unlock()
	})
	srv := testenv.StartNATS(t)
	e := &env{t: t, log: log, clock: &clock{now: time.Unix(base, 0)}, published: map[string]uint64{}}
	e.cfg = Config{
		NATS:     config.NATS{URL: srv.URL(), Partitions: config.DefaultPartitions},
		Service:  config.Service{LogLevel: "info", ShutdownTimeout: 10 * time.Second},
		Redis:    config.Redis{URL: testenv.Redis(t)},
		Postgres: config.Postgres{URL: databaseURL},
		Alerts: Alerts{Workers: 2, AckWait: 30 * time.Second, ConsumerInactive: time.Minute, ReconcileInterval: time.Second,
			RetryBackoff: 50 * time.Millisecond, MaxRetryBackoff: 500 * time.Millisecond, WebhookTimeout: 2 * time.Second,
			WebhookBackoff: 20 * time.Millisecond, WebhookMaxBackoff: 200 * time.Millisecond, WebhookMaxAge: time.Hour, WebhookAckWait: 2 * time.Second},
	}
	if err := e.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var err error
	if e.metrics, e.counted, err = metricstest.New(); err != nil {
		t.Fatal(err)
	}
	if e.nc, err = nats.Connect(srv.URL()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.nc.Close)
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
	if err := natsx.EnsureStreams(ctx, e.js); err != nil {
		t.Fatal(err)
	}
	rdb, err := redisstore.NewClient(ctx, e.cfg.Redis.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	e.store = redisstore.New(rdb, 0)
	if e.pool, err = db.NewPool(ctx, e.cfg.Postgres.URL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.pool.Close)
	return e
}

// start starts an instance named name, shut down gracefully when the test
// ends unless the test stops or kills it first.
func (e *env) start(name string) *instance {
	e.t.Helper()
	cfg := e.cfg
	cfg.Instance = name
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	rt, err := service.Boot(ctx, contract.ServiceAlerts, cfg.Service, cfg.NATS, &cfg, e.log)
	if err != nil {
		e.t.Fatalf("boot %s: %v", name, err)
	}
	var in *instance
	if err := rt.Launch(ctx, func(ctx context.Context) (err error) {
		in, err = start(ctx, cfg, rt, options{now: e.clock.Now, metrics: e.metrics,
			membership: membership.Options{Interval: 200 * time.Millisecond, Timeout: 1500 * time.Millisecond}})
		return err
	}); err != nil {
		e.t.Fatalf("start %s: %v", name, err)
	}
	e.mu.Lock()
	e.instances = append(e.instances, in)
	e.mu.Unlock()
	e.t.Cleanup(func() { e.stop(in) })
	return in
}

// stop shuts in down gracefully (a no-op when it is gone already).
func (e *env) stop(in *instance) {
	if !e.forget(in) {
		return
	}
	if err := in.rt.Shutdown(); err != nil {
		e.t.Errorf("shutdown %s: %v", in.rt.Instance, err)
	}
}

// kill makes in vanish the way a crashed process does: its connection
// closes, nothing is acknowledged, and it does not leave the membership
// group, so the others take its users over only when its heartbeats stop.
func (e *env) kill(in *instance) {
	if !e.forget(in) {
		return
	}
	in.rt.NC.Close()
	in.stopLoops()
	in.stopWork()
	in.consumer.Abandon()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.dispatch.close(ctx); err != nil {
		e.t.Errorf("kill %s: %v", in.rt.Instance, err)
	}
	in.loops.Wait()
	_ = in.stopProjecting(ctx)
	_ = in.group.Leave(ctx) // stops the heartbeat; the delete fails on the closed connection
	in.hooks.Close()
	_ = in.rt.Close(ctx)
}

func (e *env) forget(in *instance) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	i := slices.Index(e.instances, in)
	if i < 0 {
		return false
	}
	e.instances = slices.Delete(e.instances, i, i+1)
	return true
}

// running is the instances started and neither stopped nor killed.
func (e *env) running() []*instance {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.instances)
}

// waitFor polls cond until it holds or waitTimeout passes; an error from
// cond fails the test at once.
func (e *env) waitFor(what string, cond func() (bool, error)) {
	e.t.Helper()
	testenv.WaitFor(e.t, waitTimeout, what, func() bool {
		ok, err := cond()
		if err != nil {
			e.t.Fatalf("waiting for %s: %v", what, err)
		}
		return ok
	})
}

// settle waits until every running instance has acknowledged every update
// published so far. The server acknowledges a publish before it counts
// the message as pending for the consumers (it tells them asynchronously),
// so on a loaded machine the pending counts can still be zero just after
// a publish: each instance must also have been delivered the latest
// update published for each user it owns.
func (e *env) settle() {
	e.t.Helper()
	ctx := context.Background()
	e.waitFor("the updates to be acknowledged", func() (bool, error) {
		for _, in := range e.running() {
			cons, err := e.js.Consumer(ctx, contract.StreamIndicators, in.consumerName())
			if err != nil {
				return false, err
			}
			info, err := cons.Info(ctx)
			if err != nil {
				return false, err
			}
			if info.NumPending > 0 || info.NumAckPending > 0 || info.Delivered.Stream < e.lastPublished(in) {
				return false, nil
			}
		}
		return true, nil
	})
}

// lastPublished is the stream sequence of the latest update published for
// a user whose partition in owns (0 when none).
func (e *env) lastPublished(in *instance) uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	var last uint64
	for user, seq := range e.published {
		if in.consumer.OwnsKey(user) {
			last = max(last, seq)
		}
	}
	return last
}

// userState is a test user's desired state in position-monitor mode.
func userState(token string, id int64, rules ...contract.Rule) contract.DesiredState {
	settings := contract.Settings{Mode: contract.ModePositionMonitor, Symbols: []string{"BTC-USD", "ETH-USD"},
		Rules: map[contract.Mode][]contract.Rule{contract.ModePositionMonitor: rules}}
	return contract.DesiredState{User: token, UserID: id, ExchangeID: 10 + id, Mode: contract.ModePositionMonitor,
		Symbols: settings.Symbols, Revision: 1, Settings: settings}
}

// putState writes st to VIGIL_STATE as control does, after checking it
// the way control does.
func (e *env) putState(st contract.DesiredState) {
	e.t.Helper()
	if err := st.Settings.Validate(contract.DefaultLimits); err != nil {
		e.t.Fatalf("settings of %s: %v", st.User, err)
	}
	testenv.PutState(e.t, e.js, st)
}

// bar is one closed hourly bar of a test series.
type bar struct {
	i      int     // bar index after base
	close  float64 // the candle's close (rules on price)
	values map[string]contract.Fields
	// warming lists indicators still warming: absent from Values.
	warming []string
}

func (b bar) start() int64 { return base + int64(b.i)*3600 }

// update is the IndicatorUpdate of b for st's series of symbol.
func (b bar) update(st contract.DesiredState, symbol string) contract.IndicatorUpdate {
	return contract.IndicatorUpdate{
		SeriesID: contract.SeriesID{User: st.User, UserID: st.UserID, ExchangeID: st.ExchangeID, Symbol: symbol, Timeframe: contract.TF1h},
		Start:    b.start(), Closed: true, Version: b.start()*1_000_000 + 3_600_000_000, Close: b.close,
		Values: b.values, Warming: b.warming, ComputedAt: time.Unix(b.start()+3600, 0).UTC(),
	}
}

// closeBar moves the clock to just after b closed and publishes its update
// like the indicators service: the candle and the indicator values go to
// Redis first, then the update to VIGIL_INDICATORS.
func (e *env) closeBar(st contract.DesiredState, b bar) contract.IndicatorUpdate {
	e.t.Helper()
	return e.closeBarAt(st, b, time.Unix(b.start()+3600+1, 0), nil)
}

// closeBarAt is closeBar with the clock at now and headers h.
func (e *env) closeBarAt(st contract.DesiredState, b bar, now time.Time, h nats.Header) contract.IndicatorUpdate {
	e.t.Helper()
	e.clock.Set(now)
	u := b.update(st, "BTC-USD")
	e.write(u)
	e.publish(u, "", h)
	return u
}

// write stores u's candle and indicator values in Redis.
func (e *env) write(u contract.IndicatorUpdate) {
	e.t.Helper()
	ctx := context.Background()
	c := contract.Candle{SeriesID: u.SeriesID, Start: u.Start, Open: u.Close, High: u.Close, Low: u.Close, Close: u.Close,
		Volume: 1, Closed: u.Closed, Version: u.Version, Source: "test"}
	if _, err := e.store.WriteCandle(ctx, c); err != nil {
		e.t.Fatal(err)
	}
	if err := e.store.WriteIndicators(ctx, u); err != nil {
		e.t.Fatal(err)
	}
}

// publish publishes u on its subject with Nats-Msg-Id
// <series>:<start>:<version>, plus suffix when not empty (to get past the
// stream's duplicate window), and header h.
func (e *env) publish(u contract.IndicatorUpdate, suffix string, h nats.Header) {
	e.t.Helper()
	doc, err := json.Marshal(u)
	if err != nil {
		e.t.Fatal(err)
	}
	msg := nats.NewMsg(contract.IndicatorSubject(u.SeriesID))
	msg.Data = doc
	for k, v := range h {
		msg.Header[k] = v
	}
	msg.Header.Set(jetstream.MsgIDHeader, u.SeriesID.String()+":"+strconv.FormatInt(u.Start, 10)+":"+strconv.FormatInt(u.Version, 10)+suffix)
	ack, err := e.js.PublishMsg(context.Background(), msg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.published[u.User] = max(e.published[u.User], ack.Sequence)
}

// streamAlert is an alert as found in VIGIL_ALERTS.
type streamAlert struct {
	contract.Alert
	subject string
	header  nats.Header
}

// streamAlerts reads every message of VIGIL_ALERTS, in order.
func (e *env) streamAlerts() ([]streamAlert, error) {
	ctx := context.Background()
	stream, err := e.js.Stream(ctx, contract.StreamAlerts)
	if err != nil {
		return nil, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []streamAlert
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var a streamAlert
		if err := json.Unmarshal(m.Data, &a.Alert); err != nil {
			return nil, fmt.Errorf("message %d: %w", seq, err)
		}
		a.subject, a.header = m.Subject, m.Header
		out = append(out, a)
	}
	return out, nil
}

// storedAlert is an alert_events row.
type storedAlert struct {
	id, userToken, ruleID, symbol, timeframe string
	userID                                   *int64
	barStart                                 time.Time
	payload                                  contract.Alert
}

// storedAlerts reads alert_events ordered by id.
func (e *env) storedAlerts() ([]storedAlert, error) {
	rows, err := e.pool.Query(context.Background(),
		`SELECT id, user_id, user_token, rule_id, symbol, timeframe, bar_start, payload FROM alert_events ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storedAlert
	for rows.Next() {
		var s storedAlert
		var payload []byte
		if err := rows.Scan(&s.id, &s.userID, &s.userToken, &s.ruleID, &s.symbol, &s.timeframe, &s.barStart, &payload); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(payload, &s.payload); err != nil {
			return nil, fmt.Errorf("payload of %s: %w", s.id, err)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// alertIDs are the ids of the alerts in the stream (in stream order) and in
// Postgres (sorted).
func (e *env) alertIDs() (stream, stored []string, err error) {
	sa, err := e.streamAlerts()
	if err != nil {
		return nil, nil, err
	}
	for _, a := range sa {
		stream = append(stream, a.ID)
	}
	rows, err := e.storedAlerts()
	if err != nil {
		return nil, nil, err
	}
	for _, r := range rows {
		stored = append(stored, r.id)
	}
	return stream, stored, nil
}

// waitAlerts waits until the stream and Postgres both hold exactly the
// alerts with ids want (any order), then returns the stream's.
func (e *env) waitAlerts(want ...string) []streamAlert {
	e.t.Helper()
	want = slices.Sorted(slices.Values(want))
	var last string
	e.waitFor(fmt.Sprintf("alerts %v", want), func() (bool, error) {
		stream, stored, err := e.alertIDs()
		if err != nil {
			// A connection the test's pool kept across a Postgres
			// restart fails once before the pool reconnects: keep
			// waiting, and say so if it lasts.
			if last != err.Error() {
				e.t.Logf("reading alerts (retrying): %v", err)
			}
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("stream %v, postgres %v", stream, stored)
		slices.Sort(stream)
		return slices.Equal(stream, want) && slices.Equal(stored, want), nil
	})
	e.t.Logf("alerts: %s", last)
	sa, err := e.streamAlerts()
	if err != nil {
		e.t.Fatal(err)
	}
	return sa
}

// svcReplies sends a vigil.svc.alerts.<verb> request and collects the
// replies of n instances.
func (e *env) svcReplies(verb contract.Verb, req contract.SvcRequest, n int) []contract.SvcReply {
	e.t.Helper()
	replies, err := testenv.Verb(e.nc, contract.SvcAlerts, verb, req, n, waitTimeout)
	if err != nil {
		e.t.Fatal(err)
	}
	return replies
}

// deleteSnapshot deletes user's engine memory from VIGIL_ALERT_STATE.
func (e *env) deleteSnapshot(user string) {
	e.t.Helper()
	kv, err := e.js.KeyValue(context.Background(), snapshots.Bucket)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := kv.Delete(context.Background(), contract.StateKey(user)); err != nil {
		e.t.Fatal(err)
	}
}

func ptr(v float64) *float64 { return &v }
