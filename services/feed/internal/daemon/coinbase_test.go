package daemon_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/feed/internal/coinbase"
	"vigil.dev/services/feed/internal/fakecoinbase"
)

// historyBars is how many bars of each timeframe the fake holds before now.
const historyBars = 80

// exchange is a fake Coinbase with generated history for some products.
type exchange struct {
	fake *fakecoinbase.Server
	// candles[product][tf][start] are the fake's REST candles.
	candles map[string]map[contract.Timeframe]map[int64]fakecoinbase.Candle
}

func newExchange(t *testing.T, products []string, opts ...fakecoinbase.Option) *exchange {
	t.Helper()
	fake := fakecoinbase.NewServer(append([]fakecoinbase.Option{fakecoinbase.WithHeartbeatInterval(100 * time.Millisecond)}, opts...)...)
	t.Cleanup(fake.Close)
	x := &exchange{fake: fake, candles: map[string]map[contract.Timeframe]map[int64]fakecoinbase.Candle{}}
	now := time.Now()
	for _, p := range products {
		x.candles[p] = map[contract.Timeframe]map[int64]fakecoinbase.Candle{}
		for _, tf := range contract.Timeframes {
			x.generate(t, p, tf, now.Add(-historyBars*tf.Duration()), historyBars+3)
		}
	}
	return x
}

// generate adds n generated candles of product at tf from from on.
func (x *exchange) generate(t *testing.T, product string, tf contract.Timeframe, from time.Time, n int) {
	t.Helper()
	g, err := coinbase.GranularityForTimeframe(string(tf))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := x.fake.GenerateCandles(product, string(g), from, n)
	if err != nil {
		t.Fatal(err)
	}
	if x.candles[product][tf] == nil {
		x.candles[product][tf] = map[int64]fakecoinbase.Candle{}
	}
	for _, c := range cs {
		x.candles[product][tf][c.Start.Unix()] = c
	}
}

// coinbaseEnv points the feed at the fake, with short timeouts.
func coinbaseEnv(x *exchange, extra map[string]string) map[string]string {
	env := map[string]string{
		"VIGIL_FEED_SOURCE":              "coinbase",
		"VIGIL_COINBASE_WS_URL":          x.fake.WebSocketURL,
		"VIGIL_COINBASE_REST_URL":        x.fake.URL,
		"VIGIL_COINBASE_PUBLIC_RPS":      "50",
		"VIGIL_COINBASE_SILENCE_TIMEOUT": "1s",
		"VIGIL_COINBASE_RECONCILE_DELAY": "200ms",
		"VIGIL_FEED_GAP_FILL_BARS":       "60",
		"VIGIL_FEED_FLUSH_INTERVAL":      "50ms",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// pushLive sends trades every 40 ms and the current 5m bucket every 200 ms
// until the returned stop is called.
func (x *exchange) pushLive(product string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(40 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case now := <-tick.C:
				price := 100.0
				if c, ok := x.candles[product][contract.TF1m][contract.TF1m.BarStart(now).Unix()]; ok {
					price = c.Low + (c.High-c.Low)*float64(i%10)/10
				}
				x.fake.PushTrade(product, fakecoinbase.Trade{ID: strconv.Itoa(i), Price: price, Size: 0.01, Side: "BUY", Time: now})
				if i%5 == 0 {
					if c, ok := x.candles[product][contract.TF5m][contract.TF5m.BarStart(now).Unix()]; ok {
						x.fake.PushCandle(product, c)
					}
				}
			}
		}
	})
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// coversGap reports, for each timeframe, whether a REST request made after
// at read a range from at or before tf's bar of at to at or after at.
func (x *exchange) coversGap(at time.Time) map[contract.Timeframe]bool {
	out := map[contract.Timeframe]bool{}
	for _, r := range x.fake.Requests() {
		if r.At.Before(at) || r.Status != 200 {
			continue
		}
		start, _ := strconv.ParseInt(r.Query.Get("start"), 10, 64)
		end, _ := strconv.ParseInt(r.Query.Get("end"), 10, 64)
		for _, tf := range contract.Timeframes {
			g, _ := coinbase.GranularityForTimeframe(string(tf))
			if r.Query.Get("granularity") == string(g) && start <= tf.BarStart(at).Unix() && end >= at.Unix() {
				out[tf] = true
			}
		}
	}
	return out
}

// mismatch names the first closed stored bar that differs from the fake's
// REST candle of the same start ("" when all agree).
func (x *exchange) mismatch(stored []contract.Candle) string {
	for _, c := range stored {
		if !c.Closed {
			continue
		}
		want, ok := x.candles[c.Symbol][c.Timeframe][c.Start]
		if !ok {
			return fmt.Sprintf("%s bar %d is not in the exchange's history", c.Timeframe, c.Start)
		}
		if c.Open != want.Open || c.High != want.High || c.Low != want.Low || c.Close != want.Close || c.Volume != want.Volume {
			return fmt.Sprintf("%s bar %d (%s, v%d): %v/%v/%v/%v/%v, exchange %v/%v/%v/%v/%v", c.Timeframe, c.Start, c.Source, c.Version,
				c.Open, c.High, c.Low, c.Close, c.Volume, want.Open, want.High, want.Low, want.Close, want.Volume)
		}
	}
	return ""
}

func engineStats(t *testing.T, s *stack) statusView {
	t.Helper()
	for _, v := range s.statuses(t, 1) {
		return v
	}
	t.Fatal("no status")
	return statusView{}
}

func TestCoinbaseGapsAreBackfilledWithoutHolesOrOlderVersions(t *testing.T) {
	x := newExchange(t, []string{"BTC-USD"})
	s := newStack(t, 0)
	log := s.recordCandles(t)
	// Coinbase's public limit, so the gap-fill times are the real ones.
	startFeed(t, s, coinbaseEnv(x, map[string]string{"VIGIL_COINBASE_PUBLIC_RPS": "10"}))
	s.putState(t, contract.DesiredState{User: "carl", UserID: 4, ExchangeID: 2, Mode: contract.ModeScalperMACDV, Symbols: []string{"BTC-USD"}})
	series := contract.SeriesID{User: "carl", UserID: 4, ExchangeID: 2, Symbol: "BTC-USD"}
	testenv.WaitFor(t, 20*time.Second, "the user's history and the upstream subscriptions", func() bool {
		return len(s.series(t, with(series, contract.TF1d))) >= 59 &&
			x.fake.Subscribed("candles", "BTC-USD") == 1 && x.fake.Subscribed("market_trades", "BTC-USD") == 1
	})
	stopLive := x.pushLive("BTC-USD")
	defer stopLive()
	testenv.WaitFor(t, 5*time.Second, "live trades in the 1m series", func() bool {
		for _, c := range log.maxVersions(with(series, contract.TF1m)) {
			if c.Source == "coinbase" {
				return true
			}
		}
		return false
	})

	faults := []struct {
		name   string
		inject func()
	}{
		{"dropped connection", func() { x.fake.DropConnections() }},
		{"skipped sequence numbers", func() { x.fake.SkipSequence(5) }},
		{"silent stream", func() { x.fake.GoSilent(2500 * time.Millisecond) }},
	}
	for i, fault := range faults {
		at := time.Now()
		fault.inject()
		testenv.WaitFor(t, 15*time.Second, fault.name+" backfilled", func() bool {
			return engineStats(t, s).Engine.GapFills >= uint64(i+1)
		})
		st := engineStats(t, s)
		t.Logf("%s: reconnect to gap filled %v", fault.name, st.Engine.LastGapFill)
		covered := x.coversGap(at)
		for _, tf := range contract.Timeframes {
			if !covered[tf] {
				t.Errorf("%s: no REST request read the %s bars of the gap at %v", fault.name, tf, at)
			}
		}
		if fault.name == "skipped sequence numbers" && x.fake.Accepted() != 2 {
			t.Errorf("a sequence gap made %d connections, want a resubscribe on the same one", x.fake.Accepted())
		}
	}
	testenv.WaitFor(t, 10*time.Second, "live data after the faults", func() bool {
		return x.fake.Subscribed("market_trades", "BTC-USD") == 1
	})
	stopLive()

	// Closed bars are Coinbase's buckets once reconciled; wait for the last.
	for _, tf := range contract.Timeframes {
		testenv.WaitFor(t, 10*time.Second, string(tf)+" closed bars equal to the exchange's", func() bool {
			return x.mismatch(s.series(t, with(series, tf))) == ""
		})
	}
	st := engineStats(t, s)
	if st.Engine.GapFillErrors != 0 {
		t.Errorf("%d gap fills failed", st.Engine.GapFillErrors)
	}
	t.Logf("reconnect to gap filled: last %v, max %v over %d gaps; %d candle versions written, %d reconciles",
		st.Engine.LastGapFill, st.Engine.MaxGapFill, st.Engine.GapFills, st.Engine.CandlesWritten, st.Engine.Reconciles)
	for _, tf := range contract.Timeframes {
		t.Run(string(tf), func(t *testing.T) {
			id := with(series, tf)
			published := log.maxVersions(id)
			stored := s.series(t, id)
			if len(stored) < 59 {
				t.Fatalf("%d bars stored, want the gap-fill depth of 60", len(stored))
			}
			if gap := contiguous(stored); gap != 0 {
				t.Fatalf("bar %d is missing", gap)
			}
			if m := x.mismatch(stored); m != "" {
				t.Error(m)
			}
			checkNewestKept(t, stored, published)
		})
	}
}

func TestCoinbaseRateLimitIsKeptAnd429Honoured(t *testing.T) {
	x := newExchange(t, []string{"ETH-USD"})
	now := time.Now()
	x.generate(t, "ETH-USD", contract.TF1m, now.Add(-1600*time.Minute), 1603)
	x.generate(t, "ETH-USD", contract.TF5m, now.Add(-320*5*time.Minute), 323)
	s := newStack(t, 0)
	const rps = 8
	startFeed(t, s, coinbaseEnv(x, map[string]string{"VIGIL_COINBASE_PUBLIC_RPS": strconv.Itoa(rps)}))
	state := contract.DesiredState{User: "dora", UserID: 5, ExchangeID: 3, Mode: contract.ModePositionMonitor, Symbols: []string{"ETH-USD"}}
	s.putState(t, state)
	testenv.WaitFor(t, 20*time.Second, "the user's first gap fill", func() bool {
		return len(s.series(t, contract.SeriesID{User: "dora", UserID: 5, ExchangeID: 3, Symbol: "ETH-USD", Timeframe: contract.TF1d})) >= 59
	})

	progress := make(chan contract.Progress, 100)
	sub, err := s.nc.Subscribe(contract.ProgressSubject("dora", "bf1"), func(m *nats.Msg) {
		var p contract.Progress
		if json.Unmarshal(m.Data, &p) == nil {
			progress <- p
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	args, _ := json.Marshal(contract.BackfillArgs{UserID: 5, ExchangeID: 3, Symbol: "ETH-USD",
		Timeframes: []contract.Timeframe{contract.TF1m, contract.TF5m}, From: now.Add(-1500 * time.Minute), To: now,
		ProgressSubject: contract.ProgressSubject("dora", "bf1")})
	x.fake.Answer429(3)
	begin := time.Now()
	replies := s.call(t, contract.VerbBackfill, contract.SvcRequest{CommandID: "bf1", User: "dora", Args: args}, 1, 60*time.Second)
	took := time.Since(begin)
	_, result := ownerReply(t, replies)
	var candles map[contract.Timeframe]int
	if err := json.Unmarshal(result["candles"], &candles); err != nil {
		t.Fatal(err)
	}
	if candles[contract.TF1m] != 1501 || candles[contract.TF5m] != 301 {
		t.Errorf("candles = %v, want 1501 1m and 301 5m", candles)
	}
	var events []contract.Progress
	testenv.WaitFor(t, 5*time.Second, "the progress events", func() bool {
		for {
			select {
			case p := <-progress:
				events = append(events, p)
			default:
				return len(events) >= 8
			}
		}
	})
	for i, p := range events {
		if p.ID != "bf1" || p.Unit != "pages" || p.Total != 8 || p.Done != i+1 {
			t.Errorf("progress %d = %+v, want %d/8 pages of bf1", i, p, i+1)
		}
	}
	throttled := 0
	for _, r := range x.fake.Requests() {
		if r.Status == 429 {
			throttled++
		}
	}
	if throttled != 3 {
		t.Errorf("%d requests answered 429, want 3", throttled)
	}
	if got := x.fake.MaxRequestsPerWindow(time.Second); got > rps {
		t.Errorf("%d REST requests within one second, the limit is %d", got, rps)
	}
	t.Logf("backfill of 8 pages with 3×429 took %v; at most %d requests in any second (limit %d)", took, x.fake.MaxRequestsPerWindow(time.Second), rps)
}

func TestCoinbaseJWTIsVerifiedByTheExchange(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	keyFile := filepath.Join(t.TempDir(), "cdp.pem")
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	const keyName = "organizations/org-1/apiKeys/key-1"
	x := newExchange(t, []string{"BTC-USD"}, fakecoinbase.WithAuth(keyName, &key.PublicKey))
	s := newStack(t, 0)
	logs := &testenv.Buffer{}
	startFeedLogging(t, s, coinbaseEnv(x, map[string]string{
		"VIGIL_COINBASE_KEY_NAME": keyName,
		"VIGIL_COINBASE_KEY_FILE": keyFile,
	}), logs)
	s.putState(t, contract.DesiredState{User: "erin", UserID: 6, ExchangeID: 1, Mode: contract.ModePositionMonitor, Symbols: []string{"BTC-USD"}})
	testenv.WaitFor(t, 20*time.Second, "the user's history through the private endpoint", func() bool {
		return len(s.series(t, contract.SeriesID{User: "erin", UserID: 6, ExchangeID: 1, Symbol: "BTC-USD", Timeframe: contract.TF1d})) >= 59
	})
	if f := x.fake.AuthFailures(); len(f) != 0 {
		t.Fatalf("the exchange rejected tokens: %v", f)
	}
	for _, r := range x.fake.Requests() {
		if !strings.HasPrefix(r.Path, "/api/v3/brokerage/products/") || r.Status != 200 {
			t.Errorf("request %s answered %d; with a key every request goes to the private endpoint and passes", r.Path, r.Status)
		}
	}
	signed := 0
	for _, m := range x.fake.SubscribeRequests() {
		if m.Rejected {
			t.Errorf("subscribe message %+v was rejected", m)
		}
		if m.HasJWT {
			signed++
		}
	}
	if signed == 0 {
		t.Error("no WebSocket message carried a JWT")
	}
	out := logs.String()
	body := strings.Split(string(keyPEM), "\n")[1]
	if strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, body) || strings.Contains(out, keyFile) {
		t.Error("the logs contain the key or its file name")
	}
}

func TestBadFramesNeverCrashNorWriteACandle(t *testing.T) {
	x := newExchange(t, []string{"BTC-USD"})
	s := newStack(t, 0)
	startFeed(t, s, coinbaseEnv(x, nil))
	s.putState(t, contract.DesiredState{User: "fred", UserID: 7, ExchangeID: 1, Mode: contract.ModeScalperOrderbook, Symbols: []string{"BTC-USD"}})
	series := contract.SeriesID{User: "fred", UserID: 7, ExchangeID: 1, Symbol: "BTC-USD"}
	testenv.WaitFor(t, 20*time.Second, "the upstream subscriptions", func() bool {
		return x.fake.Subscribed("candles", "BTC-USD") == 1 && x.fake.Subscribed("level2", "BTC-USD") == 1
	})
	// A bucket far from anything real: no candle may ever start there.
	const poison = 978307200 // 2001-01-01
	candle := func(open, high, low, close, volume, product string) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`[{"type":"update","candles":[{"start":"%d","open":%q,"high":%q,"low":%q,"close":%q,"volume":%q,"product_id":%q}]}]`,
			poison, open, high, low, close, volume, product))
	}
	frames := []struct {
		name string
		send func() int
	}{
		{"not JSON", func() int { return x.fake.InjectRaw([]byte(`{"channel":"candles",`)) }},
		{"wrong types", func() int {
			return x.fake.InjectRaw([]byte(`{"channel":"candles","timestamp":"2026-01-01T00:00:00Z","sequence_num":"x","events":{}}`))
		}},
		{"unknown channel", func() int { return x.fake.InjectFrame("mystery", json.RawMessage(`[{"type":"update"}]`)) }},
		{"error message", func() int { return x.fake.InjectRaw([]byte(`{"type":"error","message":"failure to subscribe"}`)) }},
		{"high below low", func() int { return x.fake.InjectFrame("candles", candle("10", "9", "11", "10", "1", "BTC-USD")) }},
		{"negative price", func() int { return x.fake.InjectFrame("candles", candle("-1", "10", "-2", "5", "1", "BTC-USD")) }},
		{"not finite", func() int { return x.fake.InjectFrame("candles", candle("NaN", "Inf", "1", "2", "1", "BTC-USD")) }},
		{"bad product", func() int { return x.fake.InjectFrame("candles", candle("10", "11", "9", "10", "1", "btc usd*")) }},
		{"trade with a negative size", func() int {
			return x.fake.InjectFrame("market_trades", json.RawMessage(`[{"type":"update","trades":[{"trade_id":"1","product_id":"BTC-USD","price":"10","size":"-5","side":"BUY","time":"2001-01-01T00:00:00Z"}]}]`))
		}},
		{"book level with a bad price", func() int {
			return x.fake.InjectFrame("l2_data", json.RawMessage(`[{"type":"update","product_id":"BTC-USD","updates":[{"side":"bid","event_time":"2001-01-01T00:00:00Z","price_level":"abc","new_quantity":"1"}]}]`))
		}},
	}
	for _, f := range frames {
		if n := f.send(); n != 1 {
			t.Fatalf("%s: sent to %d connections", f.name, n)
		}
	}
	var malformed int64
	testenv.WaitFor(t, 5*time.Second, "every bad frame counted", func() bool {
		var src struct {
			Stream coinbase.StreamStats `json:"stream"`
		}
		if err := json.Unmarshal(engineStats(t, s).SourceStatus, &src); err != nil {
			t.Fatal(err)
		}
		malformed = int64(src.Stream.Malformed + src.Stream.UnknownChannel + src.Stream.ErrorFrames)
		return malformed >= int64(len(frames))
	})
	// The feed is alive: a good frame after the bad ones is written.
	now := time.Now()
	good := fakecoinbase.Candle{Start: contract.TF5m.BarStart(now), Open: 50, High: 60, Low: 40, Close: 55, Volume: 3}
	x.fake.PushCandle("BTC-USD", good)
	testenv.WaitFor(t, 5*time.Second, "a good candle after the bad frames", func() bool {
		c, ok, err := s.store.LastCandle(t.Context(), with(series, contract.TF5m))
		return err == nil && ok && c.Start == good.Start.Unix() && c.High == 60
	})
	for _, tf := range contract.Timeframes {
		for _, c := range s.series(t, with(series, tf)) {
			if c.Start < poison+86400 {
				t.Errorf("%s: a candle at %d was written from a bad frame: %+v", tf, c.Start, c)
			}
		}
	}
	t.Logf("%d bad frames counted", malformed)
}

func TestCoinbaseOneSubscriptionPerProductAndBooksForOrderbookUsers(t *testing.T) {
	x := newExchange(t, []string{"BTC-USD"})
	x.fake.SetBook("BTC-USD",
		fakecoinbase.Level{Side: "bid", Price: 99, Quantity: 1}, fakecoinbase.Level{Side: "bid", Price: 98, Quantity: 2},
		fakecoinbase.Level{Side: "offer", Price: 101, Quantity: 3}, fakecoinbase.Level{Side: "offer", Price: 102, Quantity: 4})
	s := newStack(t, 0)
	books := make(chan *nats.Msg, 64)
	sub, err := s.nc.ChanSubscribe(contract.BookSubjects, books)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	startFeed(t, s, coinbaseEnv(x, nil))
	scalper := contract.DesiredState{User: "gus", UserID: 8, ExchangeID: 1, Mode: contract.ModeScalperOrderbook, Symbols: []string{"BTC-USD"}, Revision: 1}
	s.putState(t, scalper)
	s.putState(t, contract.DesiredState{User: "hal", UserID: 9, ExchangeID: 1, Mode: contract.ModePositionMonitor, Symbols: []string{"BTC-USD"}, Revision: 1})
	testenv.WaitFor(t, 20*time.Second, "both users on the product", func() bool {
		v, err := s.tryStatuses(1, time.Second)
		if err != nil {
			return false
		}
		for _, st := range v {
			return st.Products["BTC-USD"].Subscribers == 2 && x.fake.Subscribed("level2", "BTC-USD") == 1 &&
				x.fake.Subscribed("candles", "BTC-USD") == 1 && x.fake.Subscribed("market_trades", "BTC-USD") == 1
		}
		return false
	})
	for _, ch := range []string{"candles", "market_trades", "level2"} {
		if n := x.fake.SubscribeCount("subscribe", ch, "BTC-USD"); n != 1 {
			t.Errorf("%d subscribe messages for %s BTC-USD, want one for both users", n, ch)
		}
	}
	next := func(what string, ok func(contract.BookSnapshot) bool) contract.BookSnapshot {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case m := <-books:
				var b contract.BookSnapshot
				if err := json.Unmarshal(m.Data, &b); err != nil {
					t.Fatal(err)
				}
				if m.Subject != contract.BookSubject("gus", 1, "BTC-USD") {
					t.Fatalf("book on %s; only gus is in scalper-orderbook", m.Subject)
				}
				if ok(b) {
					return b
				}
			case <-deadline:
				t.Fatalf("no book with %s", what)
			}
		}
	}
	first := next("the snapshot", func(b contract.BookSnapshot) bool { return len(b.Bids) == 2 })
	if first.Bids[0] != (contract.BookLevel{99, 1}) || first.Asks[0] != (contract.BookLevel{101, 3}) || first.Asks[1] != (contract.BookLevel{102, 4}) {
		t.Errorf("snapshot book %+v", first)
	}
	x.fake.PushLevel2("BTC-USD", fakecoinbase.Level{Side: "bid", Price: 99, Quantity: 0}, fakecoinbase.Level{Side: "offer", Price: 100.5, Quantity: 7})
	updated := next("the update", func(b contract.BookSnapshot) bool { return len(b.Asks) == 3 })
	if updated.Bids[0] != (contract.BookLevel{98, 2}) || updated.Asks[0] != (contract.BookLevel{100.5, 7}) || len(updated.Bids) != 1 {
		t.Errorf("updated book %+v", updated)
	}

	// Leaving the orderbook mode drops level2 upstream; the bars stay.
	scalper.Mode, scalper.Revision = contract.ModeScalperMACDV, 2
	s.putState(t, scalper)
	testenv.WaitFor(t, 10*time.Second, "level2 unsubscribed", func() bool { return x.fake.Subscribed("level2", "BTC-USD") == 0 })
	if x.fake.Subscribed("candles", "BTC-USD") != 1 || x.fake.Subscribed("market_trades", "BTC-USD") != 1 {
		t.Error("the bar channels went with level2")
	}
}
