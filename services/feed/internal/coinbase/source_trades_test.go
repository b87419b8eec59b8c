package coinbase

import (
	"encoding/json"
	"slices"
	"strconv"
	"testing"
	"time"

	"vigil.dev/pkg/testenv"
)

// recordedTrades reads a recorded market_trades frame
// (../shared/data/coinbase-real) as the stream would hand it over.
func recordedTrades(t *testing.T, name string) *TradesEvent {
	t.Helper()
	var frame struct {
		Events []struct {
			Type   string `json:"type"`
			Trades []struct {
				TradeID   string `json:"trade_id"`
				ProductID string `json:"product_id"`
				Price     string `json:"price"`
				Size      string `json:"size"`
				Side      string `json:"side"`
				Time      string `json:"time"`
			} `json:"trades"`
		} `json:"events"`
	}
	if err := json.Unmarshal(testenv.CoinbaseReal(t, name), &frame); err != nil {
		t.Fatal(err)
	}
	ev := &TradesEvent{Snapshot: frame.Events[0].Type == "snapshot"}
	for _, tr := range frame.Events[0].Trades {
		price, err1 := strconv.ParseFloat(tr.Price, 64)
		size, err2 := strconv.ParseFloat(tr.Size, 64)
		at, err3 := time.Parse(time.RFC3339Nano, tr.Time)
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatalf("%s: trade %+v: %v %v %v", name, tr, err1, err2, err3)
		}
		ev.Trades = append(ev.Trades, Trade{Product: tr.ProductID, TradeID: tr.TradeID, Price: price, Size: size, Side: tr.Side, Time: at})
	}
	return ev
}

func ids(trades []Trade) []string {
	out := make([]string, len(trades))
	for i, t := range trades {
		out[i] = t.TradeID
	}
	return out
}

// TestSnapshotTradesAreAppliedOnceOldestFirst runs the recorded production
// frames: the BTC-USD snapshot after subscribing (10 trades, newest first),
// the update that followed it, and the same snapshot again as after a
// resubscribe.
func TestSnapshotTradesAreAppliedOnceOldestFirst(t *testing.T) {
	s := &Source{applied: map[string]*recentIDs{}}
	snapshot := recordedTrades(t, "fastmm-seq08-market_trades-snapshot-BTC-USD.trimmed.json")
	update := recordedTrades(t, "fastmm-seq22-market_trades-update-BTC-USD.json")

	var want []string
	for id := 1100253478; id <= 1100253487; id++ {
		want = append(want, strconv.Itoa(id))
	}
	got := s.newTrades(snapshot)
	if !slices.Equal(ids(got), want) {
		t.Fatalf("first snapshot handed over %v, want %v (oldest first)", ids(got), want)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Time.Before(got[i-1].Time) {
			t.Errorf("trade %s at %v handed over after the newer %s", got[i].TradeID, got[i].Time, got[i-1].TradeID)
		}
	}
	if got := s.newTrades(update); !slices.Equal(ids(got), []string{"1100253488"}) {
		t.Errorf("the update handed over %v, want its one new trade", ids(got))
	}
	if got := s.newTrades(snapshot); len(got) != 0 {
		t.Errorf("the snapshot again (a resubscribe) handed over %v, want nothing: every trade was applied", ids(got))
	}
	// A later snapshot: two trades made while disconnected, then the
	// applied ones; only the two go over, oldest first.
	later := &TradesEvent{Snapshot: true, Trades: append([]Trade{
		{Product: "BTC-USD", TradeID: "1100253490", Price: 83280, Size: 0.5, Time: update.Trades[0].Time.Add(2 * time.Second)},
		{Product: "BTC-USD", TradeID: "1100253489", Price: 83279, Size: 0.25, Time: update.Trades[0].Time.Add(time.Second)},
		update.Trades[0]}, snapshot.Trades...)}
	if got := s.newTrades(later); !slices.Equal(ids(got), []string{"1100253489", "1100253490"}) {
		t.Errorf("the later snapshot handed over %v, want 1100253489 then 1100253490", ids(got))
	}
	// Another product's ids are its own.
	eth := recordedTrades(t, "fastmm-seq09-market_trades-snapshot-ETH-USD.trimmed.json")
	if got := s.newTrades(eth); len(got) != 5 {
		t.Errorf("the ETH-USD snapshot handed over %d trades, want 5", len(got))
	}
}

// TestTradeMemoryIsBounded: past tradeMemory ids the oldest is forgotten.
func TestTradeMemoryIsBounded(t *testing.T) {
	r := newRecentIDs(tradeMemory)
	for i := range tradeMemory + 1 {
		if !r.add(strconv.Itoa(i)) {
			t.Fatalf("id %d reported as seen", i)
		}
	}
	if len(r.set) != tradeMemory || len(r.ring) != tradeMemory {
		t.Fatalf("%d ids in the set, %d in the ring; want %d", len(r.set), len(r.ring), tradeMemory)
	}
	if r.add(strconv.Itoa(tradeMemory)) {
		t.Error("the newest id was forgotten")
	}
	if !r.add("0") {
		t.Error("the oldest id is still remembered past the bound")
	}
}
