package redisstore_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func newStore(t *testing.T, retention int) (*redisstore.Store, *redis.Client) {
	t.Helper()
	rdb, err := redisstore.NewClient(context.Background(), testenv.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	return redisstore.New(rdb, retention), rdb
}

var series = contract.SeriesID{User: "alice", UserID: 1, ExchangeID: 2, Symbol: "BTC-USD", Timeframe: contract.TF1m}

func candle(start, version int64, close float64) contract.Candle {
	return contract.Candle{SeriesID: series, Start: start, Open: close, High: close + 1, Low: close - 1, Close: close, Volume: 1, Version: version}
}

func TestWriteCandleIsVersioned(t *testing.T) {
	store, _ := newStore(t, 0)
	ctx := context.Background()
	steps := []struct {
		c       contract.Candle
		written bool
		close   float64
	}{
		{candle(60, 10, 100), true, 100},
		{candle(60, 20, 101), true, 101},  // newer version replaces
		{candle(60, 15, 99), false, 101},  // older never replaces newer
		{candle(60, 20, 500), false, 101}, // same version is a no-op (redelivery)
	}
	for i, s := range steps {
		ok, err := store.WriteCandle(ctx, s.c)
		if err != nil || ok != s.written {
			t.Fatalf("step %d: written=%v err=%v, want %v", i, ok, err, s.written)
		}
		got, err := store.Candles(ctx, series, 0, 0)
		if err != nil || len(got) != 1 || got[0].Close != s.close {
			t.Fatalf("step %d: stored %+v %v", i, got, err)
		}
	}
	if _, err := store.WriteCandle(ctx, candle(61, 1, 100)); err == nil {
		t.Fatal("a misaligned candle was written")
	}
	bad := candle(120, 1, 100)
	bad.Symbol = "BTC-*"
	if _, err := store.WriteCandle(ctx, bad); err == nil {
		t.Fatal("an invalid symbol was written")
	}
}

func TestConcurrentWritersKeepTheNewest(t *testing.T) {
	store, _ := newStore(t, 0)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for v := int64(1); v <= 50; v++ {
				if _, err := store.WriteCandle(ctx, candle(60, v*8+int64(w), float64(v*8+int64(w)))); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	got, _ := store.Candles(ctx, series, 0, 0)
	if len(got) != 1 || got[0].Version != 50*8+7 {
		t.Fatalf("want only the newest version 407, got %+v", got)
	}
}

func TestRetentionAndRanges(t *testing.T) {
	store, _ := newStore(t, 5)
	ctx := context.Background()
	var cs []contract.Candle
	for i := int64(1); i <= 8; i++ {
		cs = append(cs, candle(i*60, 1, float64(i)))
	}
	n, err := store.WriteCandles(ctx, cs)
	if err != nil || n != 8 {
		t.Fatalf("WriteCandles = %d, %v", n, err)
	}
	got, _ := store.Candles(ctx, series, 0, 0)
	if len(got) != 5 || got[0].Start != 240 || got[4].Start != 480 {
		t.Fatalf("retention kept %d candles from %d", len(got), got[0].Start)
	}
	got, _ = store.Candles(ctx, series, 300, 420)
	if len(got) != 3 {
		t.Fatalf("range [300,420] gave %d", len(got))
	}
	last, ok, err := store.LastCandle(ctx, series)
	if err != nil || !ok || last.Start != 480 {
		t.Fatalf("LastCandle = %+v %v %v", last, ok, err)
	}
	if _, ok, _ := store.LastCandle(ctx, contract.SeriesID{UserID: 9, ExchangeID: 9, Symbol: "X-Y", Timeframe: contract.TF1h}); ok {
		t.Fatal("empty series has a last candle")
	}
	if n, _ := store.WriteCandles(ctx, cs); n != 3 {
		// The three oldest were trimmed, so they are written again; the rest are redeliveries.
		t.Fatalf("rewriting gave %d writes", n)
	}
}

func TestIndicators(t *testing.T) {
	store, _ := newStore(t, 0)
	ctx := context.Background()
	u := contract.IndicatorUpdate{SeriesID: series, Start: 60, Version: 5, Closed: true,
		Values: map[string]contract.Fields{"rsi_14": {"value": 55}, "macd_12_26_9": {"macd": 1, "signal": 0.5, "hist": 0.5}}}
	if err := store.WriteIndicators(ctx, u); err != nil {
		t.Fatal(err)
	}
	u.Version, u.Values = 4, map[string]contract.Fields{"rsi_14": {"value": 1}}
	if err := store.WriteIndicators(ctx, u); err != nil {
		t.Fatal(err)
	}
	pts, err := store.Indicator(ctx, series, "rsi_14", 0, 0)
	if err != nil || len(pts) != 1 || pts[0].Fields["value"] != 55 || !pts[0].Closed {
		t.Fatalf("rsi points %+v %v", pts, err)
	}
	if _, err := store.WriteIndicator(ctx, series, "RSI*", redisstore.IndicatorPoint{Start: 60, Version: 9}); err == nil {
		t.Fatal("an invalid indicator name was written")
	}
}

func TestClearDeletesExactlyTheScope(t *testing.T) {
	store, rdb := newStore(t, 0)
	ctx := context.Background()
	keys := []string{
		"candles:1:2:BTC-USD:1m", "candles:1:2:BTC-USD:1h", "candles:1:2:ETH-USD:1m",
		"indicator:1:2:BTC-USD:1m:rsi_14", "indicator:1:2:BTC-USD:1h:rsi_14", "indicator:1:2:ETH-USD:1m:ema_20",
		"candles:1:3:BTC-USD:1m", "candles:11:2:BTC-USD:1m", "candles:2:2:BTC-USD:1m",
		"candles:1:2:BTC-USDC:1m", "indicator:1:22:BTC-USD:1m:rsi_14", "unrelated:1:2:BTC-USD", "candles:1:2",
	}
	reset := func() {
		for _, k := range keys {
			rdb.Set(ctx, k, "x", 0)
		}
	}
	remaining := func() []string {
		got, _ := rdb.Keys(ctx, "*").Result() // test inspection only
		slices.Sort(got)
		return got
	}
	without := func(del ...string) []string {
		var out []string
		for _, k := range keys {
			if !slices.Contains(del, k) {
				out = append(out, k)
			}
		}
		slices.Sort(out)
		return out
	}
	tests := []struct {
		sel     contract.CacheSelector
		deleted []string
	}{
		{contract.CacheSelector{UserID: 1, ExchangeID: 2, Scope: contract.ScopeTimeframe, Symbol: "BTC-USD", Timeframe: contract.TF1m},
			[]string{"candles:1:2:BTC-USD:1m", "indicator:1:2:BTC-USD:1m:rsi_14"}},
		{contract.CacheSelector{UserID: 1, ExchangeID: 2, Scope: contract.ScopeSymbol, Symbol: "BTC-USD"},
			[]string{"candles:1:2:BTC-USD:1m", "candles:1:2:BTC-USD:1h", "indicator:1:2:BTC-USD:1m:rsi_14", "indicator:1:2:BTC-USD:1h:rsi_14"}},
		{contract.CacheSelector{UserID: 1, ExchangeID: 2, Scope: contract.ScopeAll},
			[]string{"candles:1:2:BTC-USD:1m", "candles:1:2:BTC-USD:1h", "candles:1:2:ETH-USD:1m", "indicator:1:2:BTC-USD:1m:rsi_14",
				"indicator:1:2:BTC-USD:1h:rsi_14", "indicator:1:2:ETH-USD:1m:ema_20", "candles:1:2:BTC-USDC:1m"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.sel.Scope), func(t *testing.T) {
			rdb.FlushDB(ctx)
			reset()
			counts, err := store.CountCleared(ctx, tt.sel)
			want := map[string]int{"candles": 0, "indicator": 0}
			for _, k := range tt.deleted {
				want[strings.SplitN(k, ":", 2)[0]]++
			}
			if err != nil || !maps.Equal(counts, want) {
				t.Fatalf("CountCleared = %v, %v; want %v", counts, err, want)
			}
			if got := remaining(); !slices.Equal(got, without()) {
				t.Fatalf("CountCleared deleted keys: %v", got)
			}
			n, err := store.Clear(ctx, tt.sel)
			if err != nil || n != len(tt.deleted) {
				t.Fatalf("Clear = %d, %v; want %d", n, err, len(tt.deleted))
			}
			if got, want := remaining(), without(tt.deleted...); !slices.Equal(got, want) {
				t.Fatalf("remaining keys\n got %v\nwant %v", got, want)
			}
		})
	}
	for _, sym := range []string{"*", "BTC-*", "[A-Z]*", "BTC-USD:*"} {
		rdb.FlushDB(ctx)
		reset()
		if n, err := store.Clear(ctx, contract.CacheSelector{UserID: 1, ExchangeID: 2, Scope: contract.ScopeSymbol, Symbol: sym}); err == nil || n != 0 {
			t.Fatalf("symbol %q: deleted %d, err %v", sym, n, err)
		}
		if len(remaining()) != len(keys) {
			t.Fatalf("symbol %q deleted keys", sym)
		}
	}
}

func TestClearManyKeysInBatches(t *testing.T) {
	store, rdb := newStore(t, 0)
	ctx := context.Background()
	pipe := rdb.Pipeline()
	for i := range 2500 {
		pipe.Set(ctx, fmt.Sprintf("indicator:5:6:S%d-USD:1m:ema_20", i), "x", 0)
		pipe.Set(ctx, fmt.Sprintf("indicator:7:6:S%d-USD:1m:ema_20", i), "x", 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	counts, err := store.CountCleared(ctx, contract.CacheSelector{UserID: 5, ExchangeID: 6, Scope: contract.ScopeAll})
	if err != nil || counts["indicator"] != 2500 || counts["candles"] != 0 || rdb.DBSize(ctx).Val() != 5000 {
		t.Fatalf("CountCleared = %v, %v", counts, err)
	}
	n, err := store.Clear(ctx, contract.CacheSelector{UserID: 5, ExchangeID: 6, Scope: contract.ScopeAll})
	if err != nil || n != 2500 {
		t.Fatalf("Clear = %d, %v", n, err)
	}
	if left := rdb.DBSize(ctx).Val(); left != 2500 {
		t.Fatalf("%d keys left, want the other user's 2500", left)
	}
}

func TestPipelinedWritesSurviveScriptFlush(t *testing.T) {
	store, rdb := newStore(t, 0)
	ctx := context.Background()
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := store.WriteCandles(ctx, []contract.Candle{candle(60, 1, 1), candle(120, 1, 2)}); err != nil || n != 2 {
		t.Fatalf("WriteCandles after SCRIPT FLUSH = %d, %v", n, err)
	}
	rdb.ScriptFlush(ctx)
	u := contract.IndicatorUpdate{SeriesID: series, Start: 60, Version: 1, Values: map[string]contract.Fields{"ema_20": {"value": 1}}}
	if err := store.WriteIndicators(ctx, u); err != nil {
		t.Fatal(err)
	}
	if pts, _ := store.Indicator(ctx, series, "ema_20", 0, 0); len(pts) != 1 {
		t.Fatalf("indicator not written after SCRIPT FLUSH: %v", pts)
	}
}
