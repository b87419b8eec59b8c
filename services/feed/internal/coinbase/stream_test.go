package coinbase_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/testenv"
	"vigil.dev/services/feed/internal/coinbase"
	"vigil.dev/services/feed/internal/fakecoinbase"
)

func TestStreamDeliversMarketData(t *testing.T) {
	h := startStream(t, nil, nil)
	start := time.Date(2026, 3, 1, 12, 5, 0, 0, time.UTC)

	tests := []struct {
		name    string
		channel coinbase.Channel
		product string
		push    func() int
		check   func(t *testing.T) bool
	}{
		{
			name: "candles", channel: coinbase.ChannelCandles, product: "BTC-USD",
			push: func() int {
				return h.fake.PushCandle("BTC-USD", fakecoinbase.Candle{Start: start, Open: 100.5, High: 101.25, Low: 99.75, Close: 100, Volume: 12.5})
			},
			check: func(t *testing.T) bool {
				want := coinbase.Candle{Product: "BTC-USD", Start: start, Open: 100.5, High: 101.25, Low: 99.75, Close: 100, Volume: 12.5}
				for _, e := range eventsOf[*coinbase.CandlesEvent](h.events) {
					if !e.Snapshot && len(e.Candles) == 1 && e.Candles[0] == want {
						return true
					}
				}
				return false
			},
		},
		{
			name: "level2 snapshot then update", channel: coinbase.ChannelLevel2, product: "ETH-USD",
			push: func() int {
				return h.fake.PushLevel2("ETH-USD", fakecoinbase.Level{Side: "bid", Price: 2000, Quantity: 0})
			},
			check: func(t *testing.T) bool {
				var snapshot, update bool
				for _, e := range eventsOf[*coinbase.Level2Event](h.events) {
					if e.Product != "ETH-USD" {
						continue
					}
					if e.Snapshot && len(e.Updates) == 2 {
						snapshot = true
					}
					if !e.Snapshot && len(e.Updates) == 1 {
						u := e.Updates[0]
						update = snapshot && u.Side == coinbase.SideBid && u.Price == 2000 && u.Quantity == 0 && !u.EventTime.IsZero()
					}
				}
				return update
			},
		},
		{
			name: "market trades", channel: coinbase.ChannelMarketTrades, product: "SOL-USD",
			push: func() int {
				return h.fake.PushTrade("SOL-USD", fakecoinbase.Trade{ID: "t-1", Price: 150.5, Size: 2, Side: "BUY", Time: start})
			},
			check: func(t *testing.T) bool {
				want := coinbase.Trade{Product: "SOL-USD", TradeID: "t-1", Price: 150.5, Size: 2, Side: "BUY", Time: start}
				for _, e := range eventsOf[*coinbase.TradesEvent](h.events) {
					for _, tr := range e.Trades {
						if !e.Snapshot && tr == want {
							return true
						}
					}
				}
				return false
			},
		},
	}
	h.fake.SetBook("ETH-USD", fakecoinbase.Level{Side: "bid", Price: 2000, Quantity: 1.5}, fakecoinbase.Level{Side: "offer", Price: 2001, Quantity: 0.5})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.subscribe(t, tt.channel, tt.product)
			if n := tt.push(); n != 1 {
				t.Fatalf("push reached %d connections, want 1", n)
			}
			testenv.WaitFor(t, 5*time.Second, tt.name+" event", func() bool { return tt.check(t) })
			testenv.WaitFor(t, 5*time.Second, "freshness of "+tt.product, func() bool {
				for _, f := range h.stream.Freshness() {
					if f.Channel == tt.channel && f.Product == tt.product {
						return !f.LastMessage.IsZero() && f.Subscribers == 1
					}
				}
				return false
			})
		})
	}

	t.Run("heartbeats", func(t *testing.T) {
		testenv.WaitFor(t, 5*time.Second, "three heartbeats", func() bool { return len(eventsOf[*coinbase.HeartbeatEvent](h.events)) >= 3 })
		beats := eventsOf[*coinbase.HeartbeatEvent](h.events)
		for i := 1; i < len(beats); i++ {
			if beats[i].Counter <= beats[i-1].Counter {
				t.Fatalf("heartbeat counters not increasing: %d then %d", beats[i-1].Counter, beats[i].Counter)
			}
		}
		var heartbeats []coinbase.Freshness
		for _, f := range h.stream.Freshness() {
			if f.Channel == coinbase.ChannelHeartbeats {
				heartbeats = append(heartbeats, f)
			}
		}
		if len(heartbeats) != 1 || heartbeats[0].LastMessage.IsZero() || heartbeats[0].Product != "" {
			t.Fatalf("heartbeats freshness = %+v, want one entry with a last message", heartbeats)
		}
	})

	t.Run("subscriptions ack is cumulative", func(t *testing.T) {
		acks := eventsOf[*coinbase.SubscriptionsEvent](h.events)
		if len(acks) == 0 {
			t.Fatal("no subscriptions event")
		}
		got := acks[len(acks)-1].Subscriptions
		want := map[string][]string{"heartbeats": {"heartbeats"}, "candles": {"BTC-USD"}, "level2": {"ETH-USD"}, "market_trades": {"SOL-USD"}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("last ack = %v, want %v", got, want)
		}
	})

	stats := h.stream.Stats()
	if !stats.Connected || stats.Malformed != 0 || stats.Gaps != 0 || stats.Reconnects != 0 {
		t.Fatalf("Stats() = %+v, want connected with no malformed frames, gaps or reconnects", stats)
	}
}

func TestStreamReferenceCountsSubscriptions(t *testing.T) {
	h := startStream(t, nil, nil)
	const product = "BTC-USD"

	h.subscribe(t, coinbase.ChannelCandles, product)
	if err := h.stream.Subscribe(coinbase.ChannelCandles, product); err != nil {
		t.Fatal(err)
	}
	// A later subscription works as a barrier: the reconciler has seen the
	// second reference by the time ETH-USD is upstream.
	h.subscribe(t, coinbase.ChannelCandles, "ETH-USD")
	if n := h.fake.SubscribeCount("subscribe", "candles", product); n != 1 {
		t.Fatalf("two subscribers sent %d upstream subscribes, want 1", n)
	}

	if err := h.stream.Unsubscribe(coinbase.ChannelCandles, product); err != nil {
		t.Fatal(err)
	}
	h.subscribe(t, coinbase.ChannelCandles, "SOL-USD")
	if n := h.fake.SubscribeCount("unsubscribe", "candles", product); n != 0 || h.fake.Subscribed("candles", product) != 1 {
		t.Fatalf("after one of two unsubscribes: %d upstream unsubscribes, subscribed=%d; want 0 and 1", n, h.fake.Subscribed("candles", product))
	}

	if err := h.stream.Unsubscribe(coinbase.ChannelCandles, product); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "upstream unsubscribe", func() bool { return h.fake.Subscribed("candles", product) == 0 })
	if n := h.fake.SubscribeCount("unsubscribe", "candles", product); n != 1 {
		t.Fatalf("upstream unsubscribes = %d, want 1", n)
	}
	if h.fake.Subscribed("candles", "ETH-USD") != 1 {
		t.Fatal("unsubscribing BTC-USD dropped ETH-USD")
	}
	if err := h.stream.Unsubscribe(coinbase.ChannelCandles, product); !errors.Is(err, coinbase.ErrNotSubscribed) {
		t.Fatalf("third Unsubscribe error = %v, want ErrNotSubscribed", err)
	}
	for _, f := range h.stream.Freshness() {
		if f.Product == product {
			t.Fatalf("Freshness still lists %s after the last unsubscribe", product)
		}
	}
}

func TestStreamRejectsBadSubscriptions(t *testing.T) {
	stream, err := coinbase.NewStream(coinbase.StreamConfig{Handler: &recorder{}, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		channel coinbase.Channel
		product string
		want    error
	}{
		{"unknown channel", "ticker", "BTC-USD", coinbase.ErrInvalidChannel},
		{"heartbeats are managed", coinbase.ChannelHeartbeats, "BTC-USD", coinbase.ErrInvalidChannel},
		{"lower-case product", coinbase.ChannelCandles, "btc-usd", coinbase.ErrInvalidProduct},
		{"product without quote", coinbase.ChannelCandles, "BTC", coinbase.ErrInvalidProduct},
		{"product with wildcard", coinbase.ChannelLevel2, "BTC-*", coinbase.ErrInvalidProduct},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := stream.Subscribe(tt.channel, tt.product); !errors.Is(err, tt.want) {
				t.Fatalf("Subscribe(%q, %q) = %v, want %v", tt.channel, tt.product, err, tt.want)
			}
		})
	}
}

func TestNewStreamValidatesConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  coinbase.StreamConfig
	}{
		{"no handler", coinbase.StreamConfig{}},
		{"http URL", coinbase.StreamConfig{Handler: &recorder{}, URL: "http://example.com"}},
		{"negative silence timeout", coinbase.StreamConfig{Handler: &recorder{}, SilenceTimeout: -time.Second}},
		{"max below base", coinbase.StreamConfig{Handler: &recorder{}, ReconnectBase: time.Minute, ReconnectMax: time.Second}},
		{"negative max message", coinbase.StreamConfig{Handler: &recorder{}, MaxMessageBytes: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := coinbase.NewStream(tt.cfg); !errors.Is(err, coinbase.ErrInvalidConfig) {
				t.Fatalf("NewStream error = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestStreamReconnectsAfterDroppedConnection(t *testing.T) {
	h := startStream(t, nil, nil)
	h.subscribe(t, coinbase.ChannelCandles, "BTC-USD")
	testenv.WaitFor(t, 5*time.Second, "a heartbeat", func() bool { return len(eventsOf[*coinbase.HeartbeatEvent](h.events)) > 0 })

	beforeDrop := time.Now()
	if n := h.fake.DropConnections(); n != 1 {
		t.Fatalf("DropConnections closed %d connections, want 1", n)
	}
	testenv.WaitFor(t, 5*time.Second, "a Reconnected event", func() bool { return len(eventsOf[*coinbase.ReconnectedEvent](h.events)) == 1 })
	ev := eventsOf[*coinbase.ReconnectedEvent](h.events)[0]
	if ev.From.After(beforeDrop) || beforeDrop.Sub(ev.From) > time.Second {
		t.Errorf("Reconnected.From = %v, want the last frame shortly before the drop at %v", ev.From, beforeDrop)
	}
	if !ev.To.After(beforeDrop) || ev.To.Sub(beforeDrop) > 2*time.Second {
		t.Errorf("Reconnected.To = %v, want shortly after the drop at %v", ev.To, beforeDrop)
	}
	if ev.Attempts < 1 || ev.Cause == nil {
		t.Errorf("Reconnected = %+v, want Attempts >= 1 and a Cause", ev)
	}

	testenv.WaitFor(t, 5*time.Second, "resubscription on the new connection", func() bool {
		return h.fake.Accepted() == 2 && h.fake.Subscribed("candles", "BTC-USD") == 1 && h.fake.Subscribed("heartbeats", "heartbeats") == 1
	})
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	h.fake.PushCandle("BTC-USD", fakecoinbase.Candle{Start: start, Open: 1, High: 2, Low: 1, Close: 2, Volume: 3})
	testenv.WaitFor(t, 5*time.Second, "a candle after the reconnect", func() bool {
		for _, e := range eventsOf[*coinbase.CandlesEvent](h.events) {
			if len(e.Candles) == 1 && e.Candles[0].Start.Equal(start) {
				return true
			}
		}
		return false
	})
	if s := h.stream.Stats(); s.Reconnects != 1 || s.Gaps != 0 {
		t.Fatalf("Stats() = %+v, want 1 reconnect and no gaps (the sequence restarts per connection)", s)
	}
}

func TestStreamReportsSequenceGapAndResubscribes(t *testing.T) {
	h := startStream(t, nil, nil)
	h.subscribe(t, coinbase.ChannelCandles, "BTC-USD")
	testenv.WaitFor(t, 5*time.Second, "a heartbeat", func() bool { return len(eventsOf[*coinbase.HeartbeatEvent](h.events)) > 0 })

	h.fake.SkipSequence(5)
	testenv.WaitFor(t, 5*time.Second, "a Gap event", func() bool { return len(eventsOf[*coinbase.GapEvent](h.events)) == 1 })
	gap := eventsOf[*coinbase.GapEvent](h.events)[0]
	if gap.Got-gap.Expected != 5 {
		t.Errorf("gap Expected=%d Got=%d, want a jump of 5", gap.Expected, gap.Got)
	}
	if !gap.From.Before(gap.To) || gap.To.Sub(gap.From) > time.Second {
		t.Errorf("gap interval [%v, %v], want the last frame to now", gap.From, gap.To)
	}
	testenv.WaitFor(t, 5*time.Second, "unsubscribe and resubscribe after the gap", func() bool {
		return h.fake.SubscribeCount("unsubscribe", "candles", "BTC-USD") == 1 &&
			h.fake.SubscribeCount("subscribe", "candles", "BTC-USD") == 2 &&
			h.fake.Subscribed("candles", "BTC-USD") == 1
	})
	testenv.WaitFor(t, 5*time.Second, "heartbeats after the gap", func() bool {
		return len(eventsOf[*coinbase.HeartbeatEvent](h.events)) > 3
	})
	if s := h.stream.Stats(); s.Gaps != 1 || s.Reconnects != 0 || s.OutOfOrder != 0 {
		t.Fatalf("Stats() = %+v, want exactly 1 gap, no reconnect, nothing out of order", s)
	}
}

func TestStreamWatchdogReconnectsSilentConnection(t *testing.T) {
	const silence = 300 * time.Millisecond
	h := startStream(t, nil, func(c *coinbase.StreamConfig) { c.SilenceTimeout = silence })
	h.subscribe(t, coinbase.ChannelCandles, "BTC-USD")

	wentSilent := time.Now()
	h.fake.GoSilent(time.Minute)
	testenv.WaitFor(t, 5*time.Second, "a Reconnected event", func() bool { return len(eventsOf[*coinbase.ReconnectedEvent](h.events)) == 1 })
	ev := eventsOf[*coinbase.ReconnectedEvent](h.events)[0]
	// The watchdog counts from the last frame received, which may come a
	// moment before the fake goes silent: the lower bound is from that
	// frame (ev.From), the upper one from going silent.
	if quiet := ev.To.Sub(ev.From); quiet < silence {
		t.Errorf("reconnected %v after the last frame, want at least the silence timeout %v", quiet, silence)
	}
	if elapsed := ev.To.Sub(wentSilent); elapsed > silence+time.Second {
		t.Errorf("reconnected %v after the stream went silent, want at most %v", elapsed, silence+time.Second)
	}
	if !errors.Is(ev.Cause, coinbase.ErrSilence) {
		t.Errorf("Reconnected.Cause = %v, want ErrSilence", ev.Cause)
	}
	testenv.WaitFor(t, 5*time.Second, "resubscription", func() bool { return h.fake.Subscribed("candles", "BTC-USD") == 1 })
	if s := h.stream.Stats(); s.SilenceTimeouts != 1 {
		t.Fatalf("SilenceTimeouts = %d, want 1", s.SilenceTimeouts)
	}
}

func TestStreamCountsMalformedFrames(t *testing.T) {
	const maxBytes = 4096
	h := startStream(t, nil, func(c *coinbase.StreamConfig) { c.MaxMessageBytes = maxBytes })
	h.subscribe(t, coinbase.ChannelCandles, "BAD-USD")

	candle := func(fields string) json.RawMessage {
		return json.RawMessage(`[{"type":"update","candles":[{` + fields + `}]}]`)
	}
	const good = `"start":"1772366400","open":"1","high":"2","low":"1","close":"2","volume":"3","product_id":"BAD-USD"`
	type counter func(coinbase.StreamStats) uint64
	malformed := func(s coinbase.StreamStats) uint64 { return s.Malformed }
	tests := []struct {
		name   string
		inject func() int
		count  counter
	}{
		{"not JSON", func() int { return h.fake.InjectRaw([]byte(`{"channel":"candles",`)) }, malformed},
		{"JSON array", func() int { return h.fake.InjectRaw([]byte(`[1,2,3]`)) }, malformed},
		{"sequence_num is a string", func() int {
			return h.fake.InjectRaw([]byte(`{"channel":"candles","timestamp":"2026-03-01T12:00:00Z","sequence_num":"7","events":[]}`))
		}, malformed},
		{"sequence_num missing", func() int {
			return h.fake.InjectRaw([]byte(`{"channel":"candles","timestamp":"2026-03-01T12:00:00Z","events":[]}`))
		}, malformed},
		{"price is a number", func() int {
			return h.fake.InjectFrame("candles", candle(`"start":"1772366400","open":1,"high":"2","low":"1","close":"2","volume":"3","product_id":"BAD-USD"`))
		}, malformed},
		{"price is not a decimal", func() int {
			return h.fake.InjectFrame("candles", candle(`"start":"1772366400","open":"one","high":"2","low":"1","close":"2","volume":"3","product_id":"BAD-USD"`))
		}, malformed},
		{"price is NaN", func() int {
			return h.fake.InjectFrame("candles", candle(`"start":"1772366400","open":"NaN","high":"2","low":"1","close":"2","volume":"3","product_id":"BAD-USD"`))
		}, malformed},
		{"high below low", func() int {
			return h.fake.InjectFrame("candles", candle(`"start":"1772366400","open":"1","high":"1","low":"2","close":"2","volume":"3","product_id":"BAD-USD"`))
		}, malformed},
		{"start is not unix seconds", func() int {
			return h.fake.InjectFrame("candles", candle(`"start":"2026-03-01","open":"1","high":"2","low":"1","close":"2","volume":"3","product_id":"BAD-USD"`))
		}, malformed},
		{"unknown event type", func() int {
			return h.fake.InjectFrame("candles", json.RawMessage(`[{"type":"delta","candles":[{`+good+`}]}]`))
		}, malformed},
		{"events is an object", func() int { return h.fake.InjectFrame("candles", json.RawMessage(`{"candles":[]}`)) }, malformed},
		{"level2 side is neither bid nor offer", func() int {
			return h.fake.InjectFrame("l2_data", json.RawMessage(`[{"type":"update","product_id":"BAD-USD","updates":[{"side":"buy","event_time":"2026-03-01T12:00:00Z","price_level":"1","new_quantity":"1"}]}]`))
		}, malformed},
		{"level2 quantity is negative", func() int {
			return h.fake.InjectFrame("l2_data", json.RawMessage(`[{"type":"update","product_id":"BAD-USD","updates":[{"side":"bid","event_time":"2026-03-01T12:00:00Z","price_level":"1","new_quantity":"-1"}]}]`))
		}, malformed},
		{"trade time is not RFC 3339", func() int {
			return h.fake.InjectFrame("market_trades", json.RawMessage(`[{"type":"update","trades":[{"trade_id":"1","product_id":"BAD-USD","price":"1","size":"1","side":"BUY","time":"yesterday"}]}]`))
		}, malformed},
		// An integer or a string holding one is a counter (production
		// sends the first, Coinbase's docs the second); nothing else is.
		{"heartbeat counter is a fraction", func() int {
			return h.fake.InjectFrame("heartbeats", json.RawMessage(`[{"current_time":"now","heartbeat_counter":5.5}]`))
		}, malformed},
		{"heartbeat counter is a word", func() int {
			return h.fake.InjectFrame("heartbeats", json.RawMessage(`[{"current_time":"now","heartbeat_counter":"five"}]`))
		}, malformed},
		{"heartbeat counter is an object", func() int {
			return h.fake.InjectFrame("heartbeats", json.RawMessage(`[{"current_time":"now","heartbeat_counter":{"n":5}}]`))
		}, malformed},
		{"unknown channel", func() int {
			return h.fake.InjectFrame("ticker_batch", json.RawMessage(`[{"type":"update","tickers":[]}]`))
		},
			func(s coinbase.StreamStats) uint64 { return s.UnknownChannel }},
		{"oversized", func() int {
			return h.fake.InjectRaw([]byte(`{"channel":"candles","pad":"` + strings.Repeat("x", 2*maxBytes) + `"}`))
		}, func(s coinbase.StreamStats) uint64 { return s.Oversized }},
		{"error frame", func() int { return h.fake.InjectRaw([]byte(`{"type":"error","message":"failure to subscribe"}`)) },
			func(s coinbase.StreamStats) uint64 { return s.ErrorFrames }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.count(h.stream.Stats())
			if n := tt.inject(); n != 1 {
				t.Fatalf("injected into %d connections, want 1", n)
			}
			testenv.WaitFor(t, 5*time.Second, "the counter to grow", func() bool { return tt.count(h.stream.Stats()) == before+1 })
		})
	}

	// The stream survived all of it: the next good frame is a candle, on the
	// same connection, with no gap.
	h.fake.InjectFrame("candles", candle(good))
	testenv.WaitFor(t, 5*time.Second, "the good candle", func() bool {
		for _, e := range eventsOf[*coinbase.CandlesEvent](h.events) {
			if len(e.Candles) > 0 {
				return true
			}
		}
		return false
	})
	if got := eventsOf[*coinbase.CandlesEvent](h.events); len(got) != 2 { // the snapshot and the good update
		t.Fatalf("got %d candles events, want 2 (snapshot and the good update): %+v", len(got), got)
	}
	if errs := eventsOf[*coinbase.ErrorEvent](h.events); len(errs) != 1 || errs[0].Message != "failure to subscribe" {
		t.Fatalf("error events = %+v, want one with the exchange's message", errs)
	}
	s := h.stream.Stats()
	if s.Gaps != 0 || s.Reconnects != 0 || h.fake.Accepted() != 1 {
		t.Fatalf("Stats() = %+v, accepted=%d: want no gap and no reconnect", s, h.fake.Accepted())
	}
}

func TestStreamSignsSubscribeMessages(t *testing.T) {
	const keyName = "organizations/org-1/apiKeys/key-1"
	creds, key := newCredentials(t, keyName)
	wrongCreds, _ := newCredentials(t, keyName)

	tests := []struct {
		name         string
		creds        *coinbase.Credentials
		wantRejected bool
	}{
		{"valid key", creds, false},
		{"wrong key", wrongCreds, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := fakecoinbase.NewServer(fakecoinbase.WithAuth(keyName, &key.PublicKey), fakecoinbase.WithHeartbeatInterval(50*time.Millisecond))
			t.Cleanup(fake.Close)
			events := &recorder{}
			stream, err := coinbase.NewStream(coinbase.StreamConfig{URL: fake.WebSocketURL, Handler: events, Credentials: tt.creds, Logger: quietLogger, MessagesPerSecond: 200})
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Subscribe(coinbase.ChannelCandles, "BTC-USD"); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = stream.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })

			testenv.WaitFor(t, 5*time.Second, "two subscribe messages", func() bool { return len(fake.SubscribeRequests()) >= 2 })
			for _, r := range fake.SubscribeRequests() {
				if !r.HasJWT || r.Rejected != tt.wantRejected {
					t.Fatalf("subscribe request %+v: want a jwt and Rejected=%v (auth failures: %v)", r, tt.wantRejected, fake.AuthFailures())
				}
			}
			if tt.wantRejected {
				testenv.WaitFor(t, 5*time.Second, "error frames", func() bool { return stream.Stats().ErrorFrames >= 2 })
				if msg := eventsOf[*coinbase.ErrorEvent](events)[0].Message; msg != "authentication failure" {
					t.Fatalf("error message = %q, want authentication failure", msg)
				}
				return
			}
			testenv.WaitFor(t, 5*time.Second, "upstream subscription", func() bool { return fake.Subscribed("candles", "BTC-USD") == 1 })
			if f := fake.AuthFailures(); len(f) != 0 {
				t.Fatalf("auth failures: %v", f)
			}
		})
	}
}
