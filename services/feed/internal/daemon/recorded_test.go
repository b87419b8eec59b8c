package daemon_test

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/feed/internal/fakecoinbase"
)

// TestRecordedBookFramesThroughTheFeed sends the recorded production level2
// frames of BTC-USD (a snapshot trimmed to 10 levels a side and the updates
// that followed it, ../shared/data/coinbase-real) through the fake exchange
// to the feed: the book a scalper-orderbook user gets is the one the test
// builds from the same frames.
func TestRecordedBookFramesThroughTheFeed(t *testing.T) {
	x := newExchange(t, []string{"BTC-USD"})
	s := newStack(t, 0)
	books := make(chan *nats.Msg, 256)
	sub, err := s.nc.ChanSubscribe(contract.BookSubject("ivy", 1, "BTC-USD"), books)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	startFeed(t, s, coinbaseEnv(x, nil))
	s.putState(t, contract.DesiredState{User: "ivy", UserID: 10, ExchangeID: 1, Mode: contract.ModeScalperOrderbook, Symbols: []string{"BTC-USD"}, Revision: 1})
	testenv.WaitFor(t, 20*time.Second, "the level2 subscription", func() bool { return x.fake.Subscribed("level2", "BTC-USD") == 1 })

	book := map[string]map[float64]float64{"bid": {}, "offer": {}}
	for _, name := range []string{
		"fastmm-seq00-l2_data-snapshot-BTC-USD.trimmed.json",
		"fastmm-seq01-l2_data-update-BTC-USD.json",
		"fastmm-seq02-l2_data-update-BTC-USD.json",
		"fastmm-seq03-l2_data-update-BTC-USD.json",
		"fastmm-seq04-l2_data-update-BTC-USD.json",
		"fastmm-seq12-l2_data-update-BTC-USD.json",
	} {
		var frame struct {
			Events json.RawMessage `json:"events"`
		}
		data := testenv.CoinbaseReal(t, name)
		if err := json.Unmarshal(data, &frame); err != nil {
			t.Fatal(err)
		}
		applyRecordedLevels(t, book, frame.Events)
		// The recorded events, re-sequenced for this connection.
		if n := x.fake.InjectFrame("l2_data", frame.Events); n != 1 {
			t.Fatalf("%s sent to %d connections", name, n)
		}
	}
	wantBids, wantAsks := sortedLevels(book["bid"], true), sortedLevels(book["offer"], false)
	if len(wantBids) != 20 || len(wantAsks) != 15 {
		t.Fatalf("the frames make %d bids and %d offers, want 20 and 15 (10 a side, then the updates' new levels)", len(wantBids), len(wantAsks))
	}
	deadline := time.After(15 * time.Second)
	var last contract.BookSnapshot
	for {
		select {
		case m := <-books:
			if err := json.Unmarshal(m.Data, &last); err != nil {
				t.Fatal(err)
			}
			if slices.Equal(last.Bids, wantBids) && slices.Equal(last.Asks, wantAsks) {
				return
			}
		case <-deadline:
			t.Fatalf("no book equal to the recorded frames'; last %+v, want bids %v asks %v", last, wantBids, wantAsks)
		}
	}
}

// applyRecordedLevels applies one recorded l2_data frame's events to book
// (side → price → quantity), read with nothing but encoding/json.
func applyRecordedLevels(t *testing.T, book map[string]map[float64]float64, events json.RawMessage) {
	t.Helper()
	var evs []struct {
		Type    string `json:"type"`
		Updates []struct {
			Side        string `json:"side"`
			PriceLevel  string `json:"price_level"`
			NewQuantity string `json:"new_quantity"`
		} `json:"updates"`
	}
	if err := json.Unmarshal(events, &evs); err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if ev.Type == "snapshot" {
			clear(book["bid"])
			clear(book["offer"])
		}
		for _, u := range ev.Updates {
			price, err1 := strconv.ParseFloat(u.PriceLevel, 64)
			qty, err2 := strconv.ParseFloat(u.NewQuantity, 64)
			if err1 != nil || err2 != nil {
				t.Fatalf("level %+v: %v %v", u, err1, err2)
			}
			if qty == 0 {
				delete(book[u.Side], price)
			} else {
				book[u.Side][price] = qty
			}
		}
	}
}

// sortedLevels are a side's levels, best first.
func sortedLevels(side map[float64]float64, bids bool) []contract.BookLevel {
	prices := slices.Sorted(maps.Keys(side))
	if bids {
		slices.Reverse(prices)
	}
	out := make([]contract.BookLevel, len(prices))
	for i, p := range prices {
		out[i] = contract.BookLevel{p, side[p]}
	}
	return out
}

// TestCoinbaseTradeSnapshotAfterReconnectCountsEachTradeOnce: after a
// reconnect the exchange sends a market_trades snapshot of its last trades,
// newest first, which overlaps the trades the feed applied before the
// connection dropped. The open 1m bar must count every trade once and close
// on the newest price. The trades carry times ahead of the feed's clock (an
// exchange clock a little ahead), so the engine's "older than the gap fill"
// rule does not hide a double count: only the trade ids can.
func TestCoinbaseTradeSnapshotAfterReconnectCountsEachTradeOnce(t *testing.T) {
	x := newExchange(t, nil)
	x.fake.AddProduct("ETH-USD") // known, with no REST candles: the bar is the trades'
	s := newStack(t, 0)
	startFeed(t, s, coinbaseEnv(x, nil))
	s.putState(t, contract.DesiredState{User: "jon", UserID: 11, ExchangeID: 1, Mode: contract.ModeScalperMACDV, Symbols: []string{"ETH-USD"}})
	testenv.WaitFor(t, 20*time.Second, "the market_trades subscription", func() bool { return x.fake.Subscribed("market_trades", "ETH-USD") == 1 })
	// Room in the minute for the reconnect: the trades are stamped in its
	// last 20 seconds, and the bar must still be open when they arrive.
	testenv.WaitFor(t, 70*time.Second, "the first 15 seconds of a minute", func() bool { return time.Now().Second() < 15 })
	minute := contract.TF1m.BarStart(time.Now())
	trade := func(id int, price, size float64) fakecoinbase.Trade {
		return fakecoinbase.Trade{ID: strconv.Itoa(id), Price: price, Size: size, Side: "BUY", Time: minute.Add(time.Duration(40+id) * time.Second)}
	}
	// Sizes are powers of two, so no double count can add up to the truth.
	before := []fakecoinbase.Trade{trade(1, 2000, 1), trade(2, 2004, 2), trade(3, 1998, 4)}
	after := []fakecoinbase.Trade{trade(4, 2001, 8), trade(5, 2002.5, 16)}
	series := contract.SeriesID{User: "jon", UserID: 11, ExchangeID: 1, Symbol: "ETH-USD", Timeframe: contract.TF1m}
	bar := func() (contract.Candle, bool) {
		for _, c := range s.series(t, series) {
			if c.Start == minute.Unix() {
				return c, true
			}
		}
		return contract.Candle{}, false
	}
	for _, tr := range before {
		x.fake.PushTrade("ETH-USD", tr)
	}
	testenv.WaitFor(t, 10*time.Second, "the live trades in the bar", func() bool { c, ok := bar(); return ok && c.Volume == 7 })

	// Drop the connection; the trades made while it is down reach the
	// feed only in the snapshot after the reconnect, behind the ones it
	// has (newest first: 5, 4, 3, 2, 1).
	x.fake.DropConnections()
	for _, tr := range after {
		x.fake.PushTrade("ETH-USD", tr)
	}
	testenv.WaitFor(t, 15*time.Second, "the resubscribe", func() bool {
		return x.fake.Accepted() >= 2 && x.fake.Subscribed("market_trades", "ETH-USD") == 1
	})
	testenv.WaitFor(t, 15*time.Second, "every trade in the bar once", func() bool { c, ok := bar(); return ok && c.Volume == 31 })
	// The snapshot's new trades went in oldest first: the close is the
	// newest trade's price.
	c, _ := bar()
	want := contract.Candle{Open: 2000, High: 2004, Low: 1998, Close: 2002.5, Volume: 31}
	if c.Open != want.Open || c.High != want.High || c.Low != want.Low || c.Close != want.Close || c.Volume != want.Volume {
		t.Errorf("bar %v/%v/%v/%v/%v, want %v/%v/%v/%v/%v", c.Open, c.High, c.Low, c.Close, c.Volume, want.Open, want.High, want.Low, want.Close, want.Volume)
	}
}
