package candles_test

import (
	"context"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"vigil.dev/pkg/candlewriter"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/feed/internal/candles"
	"vigil.dev/services/feed/internal/source"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// exchangeSource is a source.Source whose clock the test moves and whose
// history is a map the test fills: the exchange's own record of each bar.
type exchangeSource struct {
	sink source.Sink

	mu       sync.Mutex
	now      time.Time
	history  map[contract.Timeframe]map[int64]source.Bar
	subs     map[source.Channel]int
	requests []contract.Timeframe
}

func (x *exchangeSource) Name() string { return "coinbase" }
func (x *exchangeSource) Caps() source.Caps {
	return source.Caps{TradeTimeframes: []contract.Timeframe{contract.TF1m}, CandleTimeframe: contract.TF5m,
		Timeframes: contract.Timeframes, Reconcile: true, ReconcileDelay: 300 * time.Millisecond}
}
func (x *exchangeSource) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (x *exchangeSource) Subscribe(ch source.Channel, _ string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.subs[ch]++
	return nil
}
func (x *exchangeSource) Unsubscribe(ch source.Channel, _ string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.subs[ch]--
	return nil
}
func (x *exchangeSource) Now() time.Time {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.now
}
func (x *exchangeSource) Status() any { return nil }
func (x *exchangeSource) History(_ context.Context, _ string, tf contract.Timeframe, from, to time.Time) ([]source.Bar, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.requests = append(x.requests, tf)
	var out []source.Bar
	for start, b := range x.history[tf] {
		if start >= tf.BarStart(from).Unix() && start < to.Unix() {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(a, b source.Bar) int { return a.Start.Compare(b.Start) })
	return out, nil
}

func (x *exchangeSource) set(b source.Bar) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.history[b.Timeframe] == nil {
		x.history[b.Timeframe] = map[int64]source.Bar{}
	}
	x.history[b.Timeframe][b.Start.Unix()] = b
}

// advance moves the clock and tells the engine.
func (x *exchangeSource) advance(to time.Time) {
	x.mu.Lock()
	x.now = to
	x.mu.Unlock()
	x.sink.Clock(to)
}

func bar(tf contract.Timeframe, start time.Time, o, h, l, c, v float64) source.Bar {
	return source.Bar{Product: "BTC-USD", Timeframe: tf, Start: start, Open: o, High: h, Low: l, Close: c, Volume: v}
}

func newEngine(t *testing.T) (*candles.Engine, *exchangeSource, *redisstore.Store) {
	t.Helper()
	return newEngineWith(t, func(*candles.Config) {})
}

// newEngineWith is newEngine with the config changed by tune.
func newEngineWith(t *testing.T, tune func(*candles.Config)) (*candles.Engine, *exchangeSource, *redisstore.Store) {
	t.Helper()
	srv := testenv.StartNATS(t)
	nc, js := testenv.Connect(t, srv.URL())
	ctx := context.Background()
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	rdb, err := redisstore.NewClient(ctx, testenv.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	store := redisstore.New(rdb, 0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	x := &exchangeSource{history: map[contract.Timeframe]map[int64]source.Bar{}, subs: map[source.Channel]int{}}
	cfg := candles.Config{Writer: candlewriter.New(store, js, log, nil), NC: nc, Log: log, FlushInterval: 10 * time.Millisecond}
	tune(&cfg)
	e, err := candles.New(cfg,
		func(s source.Sink) (source.Source, error) { x.sink = s; return x, nil })
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- e.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return e, x, store
}

func stored(t *testing.T, store *redisstore.Store, id contract.SeriesID, start time.Time) (contract.Candle, bool) {
	t.Helper()
	cs, err := store.Candles(context.Background(), id, start.Unix(), start.Unix())
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) == 0 {
		return contract.Candle{}, false
	}
	return cs[0], true
}

func sameBar(c contract.Candle, b source.Bar) bool {
	return c.Open == b.Open && c.High == b.High && c.Low == b.Low && c.Close == b.Close && math.Abs(c.Volume-b.Volume) < 1e-9
}

func TestBarsFromTradesBucketsAggregatesAndReconcile(t *testing.T) {
	e, x, store := newEngine(t)
	day := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	t0 := day.Add(10*time.Hour + 2*time.Minute + 30*time.Second)
	x.now = t0
	// The exchange's record: 5m buckets of the day up to 10:00 and the
	// minute in progress.
	for i := range 121 {
		start := day.Add(time.Duration(i) * 5 * time.Minute)
		p := 100 + float64(i)
		x.set(bar(contract.TF5m, start, p, p+2, p-1, p+1, 10))
	}
	x.set(bar(contract.TF1m, day.Add(10*time.Hour+2*time.Minute), 220, 221, 219, 220.5, 3))
	sub := candles.Subscriber{User: "ann", UserID: 1, ExchangeID: 2, Symbol: "BTC-USD"}
	if _, err := e.Attach(sub); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Attach(sub); err != nil { // the same subscriber again changes nothing
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "seeding", func() bool { p := e.Products()["BTC-USD"]; return !p.Syncing })
	if x.subs[source.ChannelBars] != 1 || e.Products()["BTC-USD"].Subscribers != 1 {
		t.Fatalf("upstream subscriptions %v, subscribers %d; want one of each", x.subs, e.Products()["BTC-USD"].Subscribers)
	}

	minute := day.Add(10*time.Hour + 2*time.Minute)
	src := sinkOf(x)
	src.Trade(source.Trade{Product: "BTC-USD", Price: 230, Size: 1, Time: t0.Add(10 * time.Second)})
	src.Trade(source.Trade{Product: "BTC-USD", Price: 218, Size: 2, Time: t0.Add(20 * time.Second)})
	src.Trade(source.Trade{Product: "BTC-USD", Price: 225, Size: 0.5, Time: t0.Add(-time.Second)}) // before the seed: in it already
	src.Trade(source.Trade{Product: "BTC-USD", Price: math.NaN(), Size: 1, Time: t0})              // malformed
	live := bar(contract.TF5m, day.Add(10*time.Hour), 221, 240, 215, 230, 7)
	src.Candle(live)
	id := contract.SeriesID{User: "ann", UserID: 1, ExchangeID: 2, Symbol: "BTC-USD"}
	with := func(tf contract.Timeframe) contract.SeriesID { id.Timeframe = tf; return id }

	// The seeded minute merged with the live trades after the seed.
	testenv.WaitFor(t, 30*time.Second, "the live 1m bar", func() bool {
		c, ok := stored(t, store, with(contract.TF1m), minute)
		return ok && sameBar(c, bar(contract.TF1m, minute, 220, 230, 218, 218, 6)) && !c.Closed
	})
	// Aggregates: the day's buckets with the live 10:00 one.
	var buckets []source.Bar
	for i := range 120 {
		buckets = append(buckets, x.history[contract.TF5m][day.Add(time.Duration(i)*5*time.Minute).Unix()])
	}
	buckets = append(buckets, live)
	for _, tc := range []struct {
		tf    contract.Timeframe
		start time.Time
	}{{contract.TF15m, day.Add(10 * time.Hour)}, {contract.TF1h, day.Add(10 * time.Hour)}, {contract.TF4h, day.Add(8 * time.Hour)}, {contract.TF1d, day}} {
		var in []source.Bar
		for _, b := range buckets {
			if !b.Start.Before(tc.start) && b.Start.Before(tc.start.Add(tc.tf.Duration())) {
				in = append(in, b)
			}
		}
		want := source.Aggregate("BTC-USD", tc.tf, in)[0]
		testenv.WaitFor(t, 30*time.Second, string(tc.tf)+" aggregate", func() bool {
			c, ok := stored(t, store, with(tc.tf), tc.start)
			return ok && sameBar(c, want) && !c.Closed
		})
	}

	// The minute closes; the exchange's final record then wins.
	liveClosed := contract.Candle{}
	x.advance(minute.Add(time.Minute))
	testenv.WaitFor(t, 30*time.Second, "the closed live 1m bar", func() bool {
		c, ok := stored(t, store, with(contract.TF1m), minute)
		liveClosed = c
		return ok && c.Closed
	})
	final := bar(contract.TF1m, minute, 220, 231, 217, 219, 9)
	x.set(final)
	src.Trade(source.Trade{Product: "BTC-USD", Price: 1000, Size: 1, Time: minute.Add(59 * time.Second)}) // late
	testenv.WaitFor(t, 30*time.Second, "the reconciled 1m bar", func() bool {
		c, ok := stored(t, store, with(contract.TF1m), minute)
		return ok && c.Closed && sameBar(c, final) && c.Version > liveClosed.Version && c.Source == "rest"
	})
	st := e.Stats()
	if st.Malformed != 1 || st.Late != 1 || st.Reconciles == 0 {
		t.Errorf("stats %+v: want 1 malformed, 1 late trade, reconciles", st)
	}

	// The last subscriber leaves: upstream unsubscribed, and the boundary
	// REST of its closing bars is dropped.
	x.advance(minute.Add(5 * time.Minute)) // closes bars: reconciles queue up
	if e.Stats().PendingReconciles == 0 {
		t.Fatal("closing bars queued no reconcile")
	}
	e.Detach("ann", 2, "BTC-USD")
	if x.subs[source.ChannelBars] != 0 || len(e.Products()) != 0 || e.Stats().PendingReconciles != 0 {
		t.Errorf("after detach: upstream %v, products %v, %d reconciles pending", x.subs, e.Products(), e.Stats().PendingReconciles)
	}
	x.advance(minute.Add(time.Hour))
	if n := e.Stats().PendingReconciles; n != 0 {
		t.Errorf("%d reconciles queued for a product nobody watches", n)
	}
}

// sinkOf returns the engine's sink as the source got it.
func sinkOf(x *exchangeSource) source.Sink { return x.sink }

func TestFlushRetriesWhatRedisRefused(t *testing.T) {
	e, x, store := newEngine(t)
	minute := time.Date(2026, 2, 2, 12, 30, 0, 0, time.UTC)
	x.now = minute.Add(10 * time.Second)
	sub := candles.Subscriber{User: "bea", UserID: 9, ExchangeID: 1, Symbol: "BTC-USD"}
	if _, err := e.Attach(sub); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "seeding", func() bool { return !e.Products()["BTC-USD"].Syncing })
	rdb := store.Client()
	ctx := context.Background()
	// A real refusal: Redis rejects writes without enough replicas.
	if err := rdb.ConfigSet(ctx, "min-replicas-to-write", "1").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.ConfigSet(context.Background(), "min-replicas-to-write", "0") })
	x.sink.Trade(source.Trade{Product: "BTC-USD", Price: 42, Size: 1, Time: minute.Add(20 * time.Second)})
	testenv.WaitFor(t, 30*time.Second, "a refused write", func() bool { return e.Stats().WriteErrors > 0 })
	if err := rdb.ConfigSet(ctx, "min-replicas-to-write", "0").Err(); err != nil {
		t.Fatal(err)
	}
	id := sub.Series(contract.TF1m)
	testenv.WaitFor(t, 30*time.Second, "the refused bar written once Redis takes writes again", func() bool {
		c, ok := stored(t, store, id, minute)
		return ok && c.Close == 42
	})
}

// TestQuietTimeframesAreCoalesced: a subscriber gets the in-progress bars
// of its Live timeframes every flush, the others' only in a quiet round
// (every QuietInterval), and every closed bar at once.
func TestQuietTimeframesAreCoalesced(t *testing.T) {
	for _, tc := range []struct {
		name  string
		quiet time.Duration
	}{{"no quiet round", time.Hour}, {"quiet rounds", 50 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			e, x, store := newEngineWith(t, func(c *candles.Config) { c.QuietInterval = tc.quiet })
			minute := time.Date(2026, 1, 5, 10, 2, 0, 0, time.UTC)
			x.now = minute.Add(30 * time.Second)
			live := candles.Subscriber{User: "ann", UserID: 1, ExchangeID: 2, Symbol: "BTC-USD", Live: candles.TimeframesOf(contract.TF1m)}
			quiet := candles.Subscriber{User: "bob", UserID: 3, ExchangeID: 2, Symbol: "BTC-USD"}
			for _, sub := range []candles.Subscriber{live, quiet} {
				if _, err := e.Attach(sub); err != nil {
					t.Fatal(err)
				}
			}
			testenv.WaitFor(t, 30*time.Second, "seeding", func() bool { return !e.Products()["BTC-USD"].Syncing })
			sinkOf(x).Trade(source.Trade{Product: "BTC-USD", Price: 230, Size: 1, Time: x.now.Add(time.Second)})
			var ann contract.Candle
			testenv.WaitFor(t, 30*time.Second, "ann's in-progress 1m bar", func() bool {
				c, ok := stored(t, store, live.Series(contract.TF1m), minute)
				ann = c
				return ok && c.Close == 230
			})
			if tc.quiet == time.Hour {
				// The first flush is a quiet round; a trade after it is
				// held back for bob.
				sinkOf(x).Trade(source.Trade{Product: "BTC-USD", Price: 240, Size: 1, Time: x.now.Add(2 * time.Second)})
				testenv.WaitFor(t, 30*time.Second, "ann's second update", func() bool {
					c, ok := stored(t, store, live.Series(contract.TF1m), minute)
					return ok && c.Close == 240
				})
				if c, ok := stored(t, store, quiet.Series(contract.TF1m), minute); ok && c.Close == 240 {
					t.Errorf("bob, without a live rule on 1m, got the in-progress update at once: %+v", c)
				}
				if c, ok := stored(t, store, live.Series(contract.TF5m), minute.Add(-2*time.Minute)); ok && c.Close == 240 {
					t.Errorf("ann's 5m bar, outside her live set, got the in-progress update at once: %+v", c)
				}
			} else {
				testenv.WaitFor(t, 30*time.Second, "bob's in-progress 1m bar in a quiet round", func() bool {
					c, ok := stored(t, store, quiet.Series(contract.TF1m), minute)
					return ok && c.Close == ann.Close && !c.Closed
				})
			}
			x.advance(minute.Add(time.Minute))
			testenv.WaitFor(t, 30*time.Second, "bob's closed 1m bar at once", func() bool {
				c, ok := stored(t, store, quiet.Series(contract.TF1m), minute)
				return ok && c.Closed
			})
		})
	}
}
