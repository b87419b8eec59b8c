package coinbase

// Recorded and documented Coinbase messages (../shared/data/coinbase-real,
// provenance in its SOURCES.md) through the decoders. This test is inside
// the package because frames are decoded by the unexported decodeFrame;
// the stream tests outside it feed the same decoder through a connection.

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/testenv"
)

// recordedFrame is what a recorded frame must decode to.
type recordedFrame struct {
	seq int64
	// errorMessage is set for exchange error frames.
	errorMessage string
	// heartbeat is the counter of a heartbeats frame.
	heartbeat int64
	// product, snapshot, bids and offers describe an l2_data event.
	product      string
	snapshot     bool
	bids, offers int
	// trades, firstTrade and lastTrade describe a market_trades event.
	trades                int
	firstTrade, lastTrade string
	// subscriptions is a subscriptions acknowledgement.
	subscriptions map[string][]string
	// candles is the number of candles of a candles event.
	candles int
}

// recordedFrames covers every WebSocket message of the folder; the counts
// are read off the files (SOURCES.md says which were trimmed).
var recordedFrames = map[string]recordedFrame{
	"doc-candles-snapshot-ETH-USD.json":                        {seq: 0, snapshot: true, candles: 1},
	"doc-heartbeats.json":                                      {seq: 0, heartbeat: 3049},
	"error-authentication-failure.json":                        {errorMessage: "authentication failure"},
	"error-failure-to-subscribe.json":                          {errorMessage: "failure to subscribe"},
	"fastmm-seq00-l2_data-snapshot-BTC-USD.trimmed.json":       {seq: 0, product: "BTC-USD", snapshot: true, bids: 10, offers: 10},
	"fastmm-seq01-l2_data-update-BTC-USD.json":                 {seq: 1, product: "BTC-USD", bids: 1, offers: 1},
	"fastmm-seq02-l2_data-update-BTC-USD.json":                 {seq: 2, product: "BTC-USD", bids: 2},
	"fastmm-seq03-l2_data-update-BTC-USD.json":                 {seq: 3, product: "BTC-USD", bids: 4, offers: 4},
	"fastmm-seq04-l2_data-update-BTC-USD.json":                 {seq: 4, product: "BTC-USD", bids: 1, offers: 1},
	"fastmm-seq05-l2_data-snapshot-ETH-USD.trimmed.json":       {seq: 5, product: "ETH-USD", snapshot: true, bids: 5, offers: 5},
	"fastmm-seq06-l2_data-update-ETH-USD.json":                 {seq: 6, product: "ETH-USD", bids: 1},
	"fastmm-seq07-subscriptions.json":                          {seq: 7, subscriptions: map[string][]string{"level2": {"BTC-USD", "ETH-USD"}}},
	"fastmm-seq08-market_trades-snapshot-BTC-USD.trimmed.json": {seq: 8, snapshot: true, trades: 10, firstTrade: "1100253487", lastTrade: "1100253478"},
	"fastmm-seq09-market_trades-snapshot-ETH-USD.trimmed.json": {seq: 9, snapshot: true, trades: 5, firstTrade: "846155146", lastTrade: "846155142"},
	"fastmm-seq10-subscriptions.json": {seq: 10, subscriptions: map[string][]string{
		"level2": {"BTC-USD", "ETH-USD"}, "market_trades": {"BTC-USD", "ETH-USD"}}},
	"fastmm-seq11-subscriptions.json": {seq: 11, subscriptions: map[string][]string{
		"heartbeats": {"heartbeats"}, "level2": {"BTC-USD", "ETH-USD"}, "market_trades": {"BTC-USD", "ETH-USD"}}},
	"fastmm-seq12-l2_data-update-BTC-USD.json":       {seq: 12, product: "BTC-USD", bids: 6, offers: 6},
	"fastmm-seq13-l2_data-update-ETH-USD.json":       {seq: 13, product: "ETH-USD", offers: 4},
	"fastmm-seq22-market_trades-update-BTC-USD.json": {seq: 22, trades: 1, firstTrade: "1100253488", lastTrade: "1100253488"},
	"fastmm-seq29-heartbeats.json":                   {seq: 29, heartbeat: 12240},
	"intx-l2_data-snapshot-BTC-PERP-INTX.cut.json":   {seq: 0, product: "BTC-PERP-INTX", snapshot: true, bids: 2, offers: 2},
	"intx-seq1-subscriptions-level2.json":            {seq: 1, subscriptions: map[string][]string{"level2": {"BTC-PERP-INTX", "ETH-PERP-INTX"}}},
	"intx-seq2-subscriptions-heartbeats.json": {seq: 2, subscriptions: map[string][]string{
		"heartbeats": {"heartbeats"}, "level2": {"BTC-PERP-INTX", "ETH-PERP-INTX"}}},
	"intx-seq3-heartbeats.json": {seq: 3, heartbeat: 139651},
}

// rawFrame is a frame read with nothing but encoding/json, to check the
// decoded values against the strings on the wire.
type rawFrame struct {
	Timestamp string `json:"timestamp"`
	Events    []struct {
		Updates []struct {
			Side        string `json:"side"`
			EventTime   string `json:"event_time"`
			PriceLevel  string `json:"price_level"`
			NewQuantity string `json:"new_quantity"`
		} `json:"updates"`
		Trades []struct {
			TradeID   string `json:"trade_id"`
			ProductID string `json:"product_id"`
			Price     string `json:"price"`
			Size      string `json:"size"`
			Side      string `json:"side"`
			Time      string `json:"time"`
		} `json:"trades"`
		Candles []rawCandle `json:"candles"`
	} `json:"events"`
}

func TestRecordedFramesDecodeWithTheirValues(t *testing.T) {
	for _, name := range testenv.CoinbaseRealFiles(t) {
		if strings.HasPrefix(name, "rest-") {
			continue // REST responses, below
		}
		t.Run(name, func(t *testing.T) {
			want, ok := recordedFrames[name]
			if !ok {
				t.Fatalf("no expectation for %s: add one", name)
			}
			data := testenv.CoinbaseReal(t, name)
			f, err := decodeFrame(data)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if len(f.events) != 1 {
				t.Fatalf("%d events, want 1", len(f.events))
			}
			if want.errorMessage != "" {
				if e, ok := f.events[0].(*ErrorEvent); !ok || e.Message != want.errorMessage || f.hasSeq {
					t.Fatalf("event %#v (sequenced %v), want an unsequenced error %q", f.events[0], f.hasSeq, want.errorMessage)
				}
				return
			}
			if !f.hasSeq || f.seq != want.seq {
				t.Errorf("sequence %d (present %v), want %d", f.seq, f.hasSeq, want.seq)
			}
			var raw rawFrame
			if err := json.Unmarshal(data, &raw); err != nil {
				t.Fatal(err)
			}
			checkRecordedEvent(t, f.events[0], want, raw)
		})
	}
}

// checkRecordedEvent compares one decoded event with the expectation and,
// value by value, with the wire strings.
func checkRecordedEvent(t *testing.T, ev Event, want recordedFrame, raw rawFrame) {
	t.Helper()
	stamp, err := time.Parse(time.RFC3339Nano, raw.Timestamp)
	if err != nil {
		t.Fatal(err)
	}
	switch e := ev.(type) {
	case *HeartbeatEvent:
		if e.Counter != want.heartbeat || !e.Timestamp.Equal(stamp) {
			t.Errorf("heartbeat %d at %v, want %d at %v", e.Counter, e.Timestamp, want.heartbeat, stamp)
		}
	case *SubscriptionsEvent:
		if !maps.EqualFunc(e.Subscriptions, want.subscriptions, slices.Equal) {
			t.Errorf("subscriptions %v, want %v", e.Subscriptions, want.subscriptions)
		}
	case *Level2Event:
		bids, offers := 0, 0
		for i, u := range e.Updates {
			w := raw.Events[0].Updates[i]
			at, err := time.Parse(time.RFC3339Nano, w.EventTime)
			if err != nil {
				t.Fatal(err)
			}
			if string(u.Side) != w.Side || u.Price != number(t, w.PriceLevel) || u.Quantity != number(t, w.NewQuantity) || !u.EventTime.Equal(at) {
				t.Errorf("level %d: %+v, wire %+v", i, u, w)
			}
			if u.Side == SideBid {
				bids++
			} else {
				offers++
			}
		}
		if e.Product != want.product || e.Snapshot != want.snapshot || bids != want.bids || offers != want.offers || len(e.Updates) != len(raw.Events[0].Updates) {
			t.Errorf("level2 %s snapshot %v with %d bids and %d offers, want %s %v %d %d", e.Product, e.Snapshot, bids, offers, want.product, want.snapshot, want.bids, want.offers)
		}
	case *TradesEvent:
		if e.Snapshot != want.snapshot || len(e.Trades) != want.trades || e.Trades[0].TradeID != want.firstTrade || e.Trades[len(e.Trades)-1].TradeID != want.lastTrade {
			t.Fatalf("trades snapshot %v, %d trades, want %v, %d from %s to %s", e.Snapshot, len(e.Trades), want.snapshot, want.trades, want.firstTrade, want.lastTrade)
		}
		for i, tr := range e.Trades {
			w := raw.Events[0].Trades[i]
			at, err := time.Parse(time.RFC3339Nano, w.Time)
			if err != nil {
				t.Fatal(err)
			}
			if tr.TradeID != w.TradeID || tr.Product != w.ProductID || tr.Price != number(t, w.Price) || tr.Size != number(t, w.Size) || tr.Side != w.Side || !tr.Time.Equal(at) {
				t.Errorf("trade %d: %+v, wire %+v", i, tr, w)
			}
			// A snapshot is newest first (what the source reverses).
			if i > 0 && tr.Time.After(e.Trades[i-1].Time) {
				t.Errorf("trade %d at %v is newer than the one before it", i, tr.Time)
			}
		}
	case *CandlesEvent:
		if e.Snapshot != want.snapshot || len(e.Candles) != want.candles {
			t.Fatalf("candles snapshot %v with %d candles, want %v with %d", e.Snapshot, len(e.Candles), want.snapshot, want.candles)
		}
		for i, c := range e.Candles {
			checkCandle(t, c, raw.Events[0].Candles[i])
		}
	default:
		t.Errorf("event %T, want one of the expected kinds", ev)
	}
}

// checkCandle compares a parsed candle with its wire strings.
func checkCandle(t *testing.T, c Candle, w rawCandle) {
	t.Helper()
	start, err := strconv.ParseInt(w.Start, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if c.Start.Unix() != start || c.Open != number(t, w.Open) || c.High != number(t, w.High) || c.Low != number(t, w.Low) || c.Close != number(t, w.Close) || c.Volume != number(t, w.Volume) {
		t.Errorf("candle %+v, wire %+v", c, w)
	}
	if w.ProductID != "" && c.Product != w.ProductID {
		t.Errorf("candle product %q, wire %q", c.Product, w.ProductID)
	}
}

func number(t *testing.T, s string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestRecordedRESTCandlesParse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		starts []int64
	}{
		// Newest first, as the API answers; the client sorts pages later.
		{"rest-candles-nautilus-BTC-USD-ONE_HOUR.json", []int64{1712192400, 1712188800}},
		// The doc's start is on no bucket boundary (hand-written); it
		// parses here and the feed's bar validation drops it.
		{"rest-candles-doc-example.json", []int64{1639508050}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := testenv.CoinbaseReal(t, tc.name)
			got, err := decodeCandlesResponse("BTC-USD", data)
			if err != nil {
				t.Fatal(err)
			}
			var raw struct {
				Candles []rawCandle `json:"candles"`
			}
			if err := json.Unmarshal(data, &raw); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.starts) {
				t.Fatalf("%d candles, want %d", len(got), len(tc.starts))
			}
			for i, c := range got {
				if c.Start.Unix() != tc.starts[i] || c.Product != "BTC-USD" {
					t.Errorf("candle %d: %s at %d, want BTC-USD at %d", i, c.Product, c.Start.Unix(), tc.starts[i])
				}
				checkCandle(t, c, raw.Candles[i])
			}
		})
	}
}

// TestHeartbeatCounterShapes: production's integer and the docs' string
// decode to the same counter; other shapes are rejected naming the field.
func TestHeartbeatCounterShapes(t *testing.T) {
	frame := func(counter string) []byte {
		return []byte(`{"channel":"heartbeats","timestamp":"2026-09-30T02:39:54.168476664Z","sequence_num":29,"events":[{"current_time":"x","heartbeat_counter":` + counter + `}]}`)
	}
	for _, counter := range []string{`12240`, `"12240"`} {
		f, err := decodeFrame(frame(counter))
		if err != nil {
			t.Fatalf("%s: %v", counter, err)
		}
		if hb, ok := f.events[0].(*HeartbeatEvent); !ok || hb.Counter != 12240 {
			t.Errorf("%s: %#v, want counter 12240", counter, f.events[0])
		}
	}
	for _, counter := range []string{`12240.5`, `"12240.5"`, `"twelve"`, `""`, `true`, `[1]`, `{"n":1}`, `null`, `1e3`} {
		_, err := decodeFrame(frame(counter))
		if err == nil || !strings.Contains(err.Error(), "heartbeat_counter") {
			t.Errorf("%s: %v, want an error naming heartbeat_counter", counter, err)
		}
	}
}
