package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	talib "github.com/markcheno/go-talib"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/partition"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/service"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/indicators/internal/daemon"
	"vigil.dev/services/indicators/internal/series"
	"vigil.dev/services/indicators/internal/ta/talibref"
)

// childEnv makes the test binary run vigil-indicators instead of the tests,
// so a test can SIGKILL a real instance.
const childEnv = "VIGIL_INDICATORS_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		service.Main(contract.ServiceIndicators, daemon.Run)
		os.Exit(0)
	}
	os.Exit(testenv.Run(m))
}

// retention is the bars kept per series in the tests: the whole CSV, so
// that a rebuild from Redis sees every bar and values stay TA-Lib-exact.
const retention = 5000

// relTolerance is the accepted error against TA-Lib: relative, or
// absolute below magnitude 1.
const relTolerance = 1e-9

// harness is one test's NATS server, Redis database and client side.
type harness struct {
	t     *testing.T
	url   string
	redis string
	nc    *nats.Conn
	js    jetstream.JetStream
	kv    jetstream.KeyValue
	store *redisstore.Store
	seen  *updateLog
}

// updateLog is every IndicatorUpdate seen on vigil.indicator.>.
type updateLog struct {
	mu      sync.Mutex
	updates []received
}

// sub is h for subtest t (failures end t, not its parent).
func (h *harness) sub(t *testing.T) *harness {
	c := *h
	c.t = t
	return &c
}

// received is one IndicatorUpdate seen on vigil.indicator.> and the
// instance that published it.
type received struct {
	contract.IndicatorUpdate
	instance string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	srv := testenv.StartNATS(t)
	h := &harness{t: t, url: srv.URL(), redis: testenv.Redis(t), seen: &updateLog{}}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	nc, err := natsx.Connect(ctx, config.NATS{URL: h.url}, "test", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	h.nc = nc
	if h.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	if err := natsx.EnsureStreams(ctx, h.js); err != nil {
		t.Fatal(err)
	}
	if h.kv, err = h.js.KeyValue(ctx, contract.BucketState); err != nil {
		t.Fatal(err)
	}
	rdb, err := redisstore.NewClient(ctx, h.redis)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	h.store = redisstore.New(rdb, retention)
	if _, err := nc.Subscribe(contract.IndicatorSubjects, func(msg *nats.Msg) {
		var u contract.IndicatorUpdate
		if err := json.Unmarshal(msg.Data, &u); err != nil {
			t.Errorf("bad update on %s: %v", msg.Subject, err)
			return
		}
		if want := msg.Header.Get(jetstream.MsgIDHeader); want != fmt.Sprintf("%s:%d:%d", u.SeriesID, u.Start, u.Version) {
			t.Errorf("update %s %d has Nats-Msg-Id %q", u.SeriesID, u.Start, want)
		}
		h.seen.mu.Lock()
		h.seen.updates = append(h.seen.updates, received{u, msg.Header.Get(series.InstanceHeader)})
		h.seen.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return h
}

// config is the configuration of instance name.
func (h *harness) config(name string) daemon.Config {
	return daemon.Config{
		NATS:      config.NATS{URL: h.url},
		Service:   config.Service{Instance: name, LogLevel: "info", ShutdownTimeout: 10 * time.Second},
		Redis:     config.Redis{URL: h.redis},
		Retention: retention,
	}
}

// instance is a running vigil-indicators.
type instance struct {
	name string
	stop func() // graceful (cancel) or SIGKILL
	done chan error
}

// startInstance runs an instance in this process; stopping it cancels its
// context (a graceful shutdown).
func (h *harness) startInstance(name string) *instance {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{name: name, stop: cancel, done: make(chan error, 1)}
	go func() { in.done <- daemon.Serve(ctx, h.config(name), h.t.Output()) }()
	h.t.Cleanup(func() { in.stop(); <-in.done })
	return in
}

// startProcess runs an instance as a child process; stopping it kills it
// with SIGKILL (a crash: no shutdown, no membership leave).
func (h *harness) startProcess(name string) *instance {
	h.t.Helper()
	cmd := exec.Command(os.Args[0]) // TestMain runs the service, not the tests
	cmd.Env = append(os.Environ(), childEnv+"=1", "NATS_URL="+h.url, "REDIS_URL="+h.redis,
		"VIGIL_INSTANCE="+name, "VIGIL_INDICATORS_RETENTION="+strconv.Itoa(retention), "VIGIL_LOG_LEVEL=info")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	in := &instance{name: name, done: make(chan error, 1)}
	in.stop = func() { _ = cmd.Process.Signal(syscall.SIGKILL) }
	go func() { in.done <- cmd.Wait() }()
	h.t.Cleanup(func() {
		in.stop()
		<-in.done
		if h.t.Failed() {
			h.t.Logf("output of %s:\n%s", name, out.String())
		}
	})
	return in
}

// request sends a vigil.svc.indicators.<verb> request and returns the
// replies of want instances.
func (h *harness) request(verb contract.Verb, req contract.SvcRequest, want int) []contract.SvcReply {
	h.t.Helper()
	replies, err := h.tryRequest(verb, req, want, 20*time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	return replies
}

// tryRequest is request returning an error when fewer than want
// instances answer within timeout, or one answers an error.
func (h *harness) tryRequest(verb contract.Verb, req contract.SvcRequest, want int, timeout time.Duration) ([]contract.SvcReply, error) {
	replies, err := testenv.Verb(h.nc, contract.SvcIndicators, verb, req, want, timeout)
	if err == nil {
		err = replies.AllOK()
	}
	return replies, err
}

// statuses returns the status of each of n instances.
func (h *harness) statuses(n int) []contract.IndicatorsStatus {
	h.t.Helper()
	sts, err := h.tryStatuses(n)
	if err != nil {
		h.t.Fatal(err)
	}
	return sts
}

func (h *harness) tryStatuses(n int) ([]contract.IndicatorsStatus, error) {
	sts, err := testenv.Statuses[contract.IndicatorsStatus](h.nc, contract.SvcIndicators, n, 2*time.Second)
	if err != nil {
		return nil, err
	}
	out := make([]contract.IndicatorsStatus, 0, len(sts))
	for _, st := range sts {
		if st.Instance == "" {
			return nil, fmt.Errorf("an instance is starting")
		}
		out = append(out, st)
	}
	return out, nil
}

// waitMembers waits until n instances answer status and each sees n live
// members, and returns their ids by configured name.
func (h *harness) waitMembers(n int) map[string]string {
	h.t.Helper()
	ids := map[string]string{}
	testenv.Eventually(h.t, 30*time.Second, func() error {
		clear(ids)
		sts, err := h.tryStatuses(n)
		if err != nil {
			return err
		}
		for _, st := range sts {
			if len(st.Members) != n {
				return fmt.Errorf("instance %s sees members %v", st.Instance, st.Members)
			}
			ids[st.Name] = st.Instance
		}
		return nil
	})
	return ids
}

// putState writes a user's desired state to KV VIGIL_STATE as control does.
func (h *harness) putState(st contract.DesiredState) contract.DesiredState {
	h.t.Helper()
	return testenv.PutState(h.t, h.js, st)
}

// feed does what vigil-feed does with a candle update: write it to Redis,
// then publish it on VIGIL_CANDLES.
func (h *harness) feed(cs ...contract.Candle) {
	h.t.Helper()
	ctx := context.Background()
	for _, c := range cs {
		if _, err := h.store.WriteCandle(ctx, c); err != nil {
			h.t.Fatal(err)
		}
		data, err := json.Marshal(c)
		if err != nil {
			h.t.Fatal(err)
		}
		if _, err := h.js.Publish(ctx, contract.CandleSubject(c.SeriesID), data, jetstream.WithMsgID(c.MsgID())); err != nil {
			h.t.Fatal(err)
		}
	}
}

// feedFlush does what one vigil-feed flush does with several candle
// updates: write them all to Redis, then publish them in the given order
// (the feed's order within a flush is not by bar).
func (h *harness) feedFlush(cs ...contract.Candle) {
	h.t.Helper()
	ctx := context.Background()
	if _, err := h.store.WriteCandles(ctx, cs); err != nil {
		h.t.Fatal(err)
	}
	for _, c := range cs {
		data, err := json.Marshal(c)
		if err != nil {
			h.t.Fatal(err)
		}
		if _, err := h.js.Publish(ctx, contract.CandleSubject(c.SeriesID), data, jetstream.WithMsgID(c.MsgID())); err != nil {
			h.t.Fatal(err)
		}
	}
}

// received returns the updates seen so far that match keep.
func (h *harness) received(keep func(received) bool) []received {
	h.seen.mu.Lock()
	defer h.seen.mu.Unlock()
	var out []received
	for _, r := range h.seen.updates {
		if keep(r) {
			out = append(out, r)
		}
	}
	return out
}

// waitUpdate waits for an update of series id at bar start with the given
// closed flag and returns the newest such.
func (h *harness) waitUpdate(id contract.SeriesID, start int64, closed bool) received {
	h.t.Helper()
	var got received
	testenv.Eventually(h.t, 60*time.Second, func() error {
		rs := h.received(func(r received) bool { return r.SeriesID == id && r.Start == start && r.Closed == closed })
		if len(rs) == 0 {
			return fmt.Errorf("no update of %s at %d (closed %v)", id, start, closed)
		}
		got = rs[len(rs)-1]
		return nil
	})
	return got
}

// monitorPositions gives id's user the position-monitor mode on id's
// symbol and waits until the one instance runs the user.
func (h *harness) monitorPositions(id contract.SeriesID) {
	h.t.Helper()
	h.putState(contract.DesiredState{User: id.User, UserID: id.UserID, ExchangeID: id.ExchangeID, Mode: contract.ModePositionMonitor, Symbols: []string{id.Symbol}})
	testenv.Eventually(h.t, 10*time.Second, func() error { return statusHasUsers(h.statuses(1)[0], id.User) })
}

// waitAllAcked waits until every consumer of VIGIL_CANDLES has acked
// every candle: none waits for delivery or acknowledgement.
func (h *harness) waitAllAcked() {
	h.t.Helper()
	ctx := context.Background()
	testenv.Eventually(h.t, 30*time.Second, func() error {
		stream, err := h.js.Stream(ctx, contract.StreamCandles)
		if err != nil {
			return err
		}
		for name := range stream.ConsumerNames(ctx).Name() {
			c, err := stream.Consumer(ctx, name)
			if err != nil {
				return err
			}
			if info := c.CachedInfo(); info.NumAckPending+int(info.NumPending) > 0 {
				return fmt.Errorf("consumer %s: %d candles unacked, %d undelivered", name, info.NumAckPending, info.NumPending)
			}
		}
		return nil
	})
}

// stored returns the stored points of one indicator by bar start.
func (h *harness) stored(id contract.SeriesID, name string) map[int64]redisstore.IndicatorPoint {
	h.t.Helper()
	points, err := h.store.Indicator(context.Background(), id, name, 0, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	out := make(map[int64]redisstore.IndicatorPoint, len(points))
	for _, p := range points {
		out[p.Start] = p
	}
	return out
}

// candles turns the first n reference bars into closed candles of series
// id, re-timed to its timeframe from the first bar's start and prices
// scaled by scale. Versions are the bar's end in microseconds.
func candles(t *testing.T, id contract.SeriesID, n int, scale float64) []contract.Candle {
	t.Helper()
	bars := testenv.BTCUSD1h(t)
	if n > len(bars) {
		n = len(bars)
	}
	step := int64(id.Timeframe.Duration() / time.Second)
	first := bars[0].Start / step * step
	out := make([]contract.Candle, n)
	for i, b := range bars[:n] {
		start := first + int64(i)*step
		out[i] = contract.Candle{SeriesID: id, Start: start, Open: b.Open * scale, High: b.High * scale, Low: b.Low * scale,
			Close: b.Close * scale, Volume: b.Volume, Closed: true, Version: (start + step) * 1_000_000, Source: "test"}
	}
	return out
}

// oracle computes indicator name (as contract names it) over cs with
// go-talib's batch functions, which agree with C TA-Lib except for MACD
// (talibref.MACD is C TA-Lib's); nil entries are warming.
func oracle(t *testing.T, name string, cs []contract.Candle) []contract.Fields {
	t.Helper()
	n := len(cs)
	high, low, closes := make([]float64, n), make([]float64, n), make([]float64, n)
	for i, c := range cs {
		high[i], low[i], closes[i] = c.High, c.Low, c.Close
	}
	out := make([]contract.Fields, n)
	single := func(lookback int, v []float64) {
		for i := lookback; i < n; i++ {
			out[i] = contract.Fields{"value": v[i]}
		}
	}
	var a, b, c int
	switch {
	case sscan(name, "ema_%d", &a):
		single(a-1, talib.Ema(closes, a))
	case sscan(name, "sma_%d", &a):
		single(a-1, talib.Sma(closes, a))
	case sscan(name, "rsi_%d", &a):
		single(a, talib.Rsi(closes, a))
	case sscan(name, "atr_%d", &a):
		single(a, talib.Atr(high, low, closes, a))
	case sscan(name, "bb_%d_%d", &a, &b):
		upper, middle, lower := talib.BBands(closes, a, float64(b), float64(b), talib.SMA)
		for i := a - 1; i < n; i++ {
			out[i] = contract.Fields{"upper": upper[i], "middle": middle[i], "lower": lower[i]}
		}
	case sscan(name, "macd_%d_%d_%d", &a, &b, &c):
		macd, signal, hist := talibref.MACD(closes, a, b, c)
		for i := b - 1 + c - 1; i < n; i++ {
			out[i] = contract.Fields{"macd": macd[i], "signal": signal[i], "hist": hist[i]}
		}
	case sscan(name, "macdv_%d_%d_%d", &a, &b, &c):
		fast, slow, atr := talib.Ema(closes, a), talib.Ema(closes, b), talib.Atr(high, low, closes, b)
		line := make([]float64, n-b)
		for i := range line {
			line[i] = (fast[i+b] - slow[i+b]) / atr[i+b] * 100
		}
		signal := talib.Ema(line, c)
		for i := b + c - 1; i < n; i++ {
			m, s := line[i-b], signal[i-b]
			out[i] = contract.Fields{"macd": m, "signal": s, "hist": m - s}
		}
	default:
		t.Fatalf("no oracle for %s", name)
	}
	return out
}

// sscan reports whether name has exactly the form format.
func sscan(name, format string, args ...any) bool {
	n, err := fmt.Sscanf(name, format, args...)
	if err != nil || n != len(args) {
		return false
	}
	ints := make([]any, len(args))
	for i, a := range args {
		ints[i] = *(a.(*int))
	}
	return fmt.Sprintf(format, ints...) == name
}

// diff is the largest scaled difference between two field sets with the
// same names; +Inf when they differ in names.
func diff(got, want contract.Fields) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	worst := 0.0
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			return math.Inf(1)
		}
		worst = max(worst, math.Abs(g-w)/math.Max(1, math.Abs(w)))
	}
	return worst
}

// checkStored checks that every warm bar of indicator name over cs is
// stored with go-talib's value and no warming bar is stored, and returns
// the largest scaled error.
func (h *harness) checkStored(id contract.SeriesID, name string, cs []contract.Candle) float64 {
	h.t.Helper()
	want := oracle(h.t, name, cs)
	points := h.stored(id, name)
	worst := 0.0
	for i, c := range cs {
		p, ok := points[c.Start]
		switch {
		case want[i] == nil && ok:
			h.t.Fatalf("%s %s bar %d: warming bar stored %+v", id, name, i, p)
		case want[i] == nil:
		case !ok:
			h.t.Fatalf("%s %s bar %d (%d): no value stored", id, name, i, c.Start)
		case !p.Closed:
			h.t.Fatalf("%s %s bar %d: stored value is not closed", id, name, i)
		default:
			d := diff(p.Fields, want[i])
			if d > relTolerance {
				h.t.Fatalf("%s %s bar %d: stored %v, go-talib %v (scaled error %.3g)", id, name, i, p.Fields, want[i], d)
			}
			worst = max(worst, d)
		}
	}
	return worst
}

// ownerOf is the instance among members that owns series id: the owner of
// its partition of VIGIL_CANDLES.
func ownerOf(members []string, id contract.SeriesID) string {
	k := natsx.Of(natsx.DefaultPartitions, id.User, strconv.FormatInt(id.ExchangeID, 10), id.Symbol, string(id.Timeframe))
	return partition.Assign(members, natsx.DefaultPartitions)[k]
}
