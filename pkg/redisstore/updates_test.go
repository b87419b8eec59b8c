package redisstore_test

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
)

func TestWriteIndicatorUpdates(t *testing.T) {
	other := series
	other.Symbol = "ETH-USD"
	update := func(id contract.SeriesID, start, version int64, name string, value float64) contract.IndicatorUpdate {
		return contract.IndicatorUpdate{SeriesID: id, Start: start, Version: version, Closed: true,
			Values: map[string]contract.Fields{name: {"value": value}}}
	}
	tests := []struct {
		name string
		ups  []contract.IndicatorUpdate
		// want is the stored value of each (series, bar) of rsi_14.
		want    map[contract.SeriesID]map[int64]float64
		wantErr error
	}{
		{
			name: "many series and bars in one call",
			ups: []contract.IndicatorUpdate{
				update(series, 60, 1, "rsi_14", 10), update(other, 60, 1, "rsi_14", 20),
				update(series, 120, 2, "rsi_14", 11), update(other, 120, 2, "rsi_14", 21),
			},
			want: map[contract.SeriesID]map[int64]float64{series: {60: 10, 120: 11}, other: {60: 20, 120: 21}},
		},
		{
			name: "a later update of a bar replaces an earlier one, an older one does not",
			ups: []contract.IndicatorUpdate{
				update(series, 60, 1, "rsi_14", 10), update(series, 60, 3, "rsi_14", 13), update(series, 60, 2, "rsi_14", 12),
			},
			want: map[contract.SeriesID]map[int64]float64{series: {60: 13}, other: {}},
		},
		{
			name:    "an invalid name writes nothing",
			ups:     []contract.IndicatorUpdate{update(series, 60, 1, "rsi_14", 10), update(other, 60, 1, "RSI*", 20)},
			want:    map[contract.SeriesID]map[int64]float64{series: {}, other: {}},
			wantErr: contract.ErrInvalid,
		},
		{
			name: "updates without values write nothing",
			ups:  []contract.IndicatorUpdate{{SeriesID: series, Start: 60, Version: 1, Warming: []string{"rsi_14"}}},
			want: map[contract.SeriesID]map[int64]float64{series: {}, other: {}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store, _ := newStore(t, 0)
			ctx := context.Background()
			err := store.WriteIndicatorUpdates(ctx, tt.ups)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("WriteIndicatorUpdates error %v, want %v", err, tt.wantErr)
			}
			for id, want := range tt.want {
				pts, err := store.Indicator(ctx, id, "rsi_14", 0, 0)
				if err != nil {
					t.Fatal(err)
				}
				if len(pts) != len(want) {
					t.Fatalf("%s: %d points stored, want %d: %+v", id, len(pts), len(want), pts)
				}
				for _, p := range pts {
					if v, ok := want[p.Start]; !ok || p.Fields["value"] != v {
						t.Fatalf("%s bar %d: stored %v, want %v", id, p.Start, p.Fields["value"], want[p.Start])
					}
				}
			}
		})
	}
}

// evalshaCalls is how many EVALSHA commands the Redis server has run.
func evalshaCalls(t *testing.T, rdb *redis.Client) int64 {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(info) {
		if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:calls="); ok {
			n, err := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	return 0
}

// TestWriteIndicatorUpdatesOneCallPerUpdate checks that each update's
// indicator keys are written by one script call, and that each key keeps
// its own version: a key holding a newer point is left alone while the
// others of the same update are written.
func TestWriteIndicatorUpdatesOneCallPerUpdate(t *testing.T) {
	store, rdb := newStore(t, 0)
	ctx := context.Background()
	newer := contract.IndicatorUpdate{SeriesID: series, Start: 60, Version: 5, Closed: true,
		Values: map[string]contract.Fields{"rsi_14": {"value": 50}}}
	if err := store.WriteIndicatorUpdates(ctx, []contract.IndicatorUpdate{newer}); err != nil {
		t.Fatal(err) // also loads the script, so the count below has no NOSCRIPT retry
	}
	values := func(v float64) map[string]contract.Fields {
		return map[string]contract.Fields{"rsi_14": {"value": v}, "ema_9": {"value": v + 1},
			"macd_12_26_9": {"macd": v, "signal": v + 2, "hist": -2}}
	}
	ups := []contract.IndicatorUpdate{
		{SeriesID: series, Start: 60, Version: 3, Closed: true, Values: values(10)},
		{SeriesID: series, Start: 120, Version: 6, Closed: true, Values: values(20)},
		{SeriesID: series, Start: 180, Version: 7, Warming: []string{"rsi_14"}},
	}
	before := evalshaCalls(t, rdb)
	if err := store.WriteIndicatorUpdates(ctx, ups); err != nil {
		t.Fatal(err)
	}
	if calls := evalshaCalls(t, rdb) - before; calls != 2 {
		t.Fatalf("%d EVALSHA calls for two updates with values, want 2", calls)
	}
	want := map[string]map[int64]contract.Fields{
		"rsi_14":       {60: {"value": 50}, 120: {"value": 20}},
		"ema_9":        {60: {"value": 11}, 120: {"value": 21}},
		"macd_12_26_9": {60: {"macd": 10, "signal": 12, "hist": -2}, 120: {"macd": 20, "signal": 22, "hist": -2}},
	}
	for name, bars := range want {
		pts, err := store.Indicator(ctx, series, name, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(pts) != len(bars) {
			t.Fatalf("%s: %d points stored, want %d: %+v", name, len(pts), len(bars), pts)
		}
		for _, p := range pts {
			if !maps.Equal(p.Fields, bars[p.Start]) {
				t.Fatalf("%s bar %d: stored %v, want %v", name, p.Start, p.Fields, bars[p.Start])
			}
		}
	}
}

// TestWriteIndicatorUpdatesRetention checks that the script trims each
// key to the retention.
func TestWriteIndicatorUpdatesRetention(t *testing.T) {
	store, _ := newStore(t, 2)
	ctx := context.Background()
	var ups []contract.IndicatorUpdate
	for i := int64(1); i <= 3; i++ {
		ups = append(ups, contract.IndicatorUpdate{SeriesID: series, Start: 60 * i, Version: i, Closed: true,
			Values: map[string]contract.Fields{"rsi_14": {"value": float64(i)}, "ema_9": {"value": float64(i)}}})
	}
	if err := store.WriteIndicatorUpdates(ctx, ups); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"rsi_14", "ema_9"} {
		pts, err := store.Indicator(ctx, series, name, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(pts) != 2 || pts[0].Start != 120 || pts[1].Start != 180 {
			t.Fatalf("%s: stored %+v, want bars 120 and 180", name, pts)
		}
	}
}

// TestLongWritesAndReadsAreChunked: a write longer than PipelineChunk
// calls and a read longer than ReadChunk members are sent as several
// pipelines and reads, and store and return every bar, in order, once.
func TestLongWritesAndReadsAreChunked(t *testing.T) {
	bars := 2*redisstore.ReadChunk + 7
	if bars < 2*redisstore.PipelineChunk+7 {
		bars = 2*redisstore.PipelineChunk + 7
	}
	store, _ := newStore(t, bars)
	ctx := context.Background()
	cs := make([]contract.Candle, bars)
	ups := make([]contract.IndicatorUpdate, bars)
	for i := range cs {
		start := int64(i+1) * 60
		cs[i] = contract.Candle{SeriesID: series, Start: start, Open: 1, High: 2, Low: 1, Close: float64(i), Volume: 1, Closed: true, Version: start}
		ups[i] = contract.IndicatorUpdate{SeriesID: series, Start: start, Version: start, Closed: true,
			Values: map[string]contract.Fields{"rsi_14": {"value": float64(i)}}}
	}
	if n, err := store.WriteCandles(ctx, cs); err != nil || n != bars {
		t.Fatalf("WriteCandles wrote %d of %d: %v", n, bars, err)
	}
	if err := store.WriteIndicatorUpdates(ctx, ups); err != nil {
		t.Fatal(err)
	}
	got, err := store.Candles(ctx, series, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != bars {
		t.Fatalf("Candles returned %d candles, want %d", len(got), bars)
	}
	for i, c := range got {
		if c.Start != cs[i].Start || c.Close != cs[i].Close {
			t.Fatalf("candle %d: start %d close %v, want %d %v", i, c.Start, c.Close, cs[i].Start, cs[i].Close)
		}
	}
	// A bounded range that ends within the second chunk.
	to := cs[redisstore.ReadChunk+3].Start
	if got, err = store.Candles(ctx, series, cs[1].Start, to); err != nil || len(got) != redisstore.ReadChunk+3 {
		t.Fatalf("Candles [%d, %d] returned %d candles, want %d: %v", cs[1].Start, to, len(got), redisstore.ReadChunk+3, err)
	}
	pts, err := store.Indicator(ctx, series, "rsi_14", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != bars {
		t.Fatalf("%d rsi_14 points stored, want %d", len(pts), bars)
	}
	for i, p := range pts {
		if p.Start != ups[i].Start || p.Fields["value"] != float64(i) {
			t.Fatalf("point %d: start %d value %v, want %d %d", i, p.Start, p.Fields["value"], ups[i].Start, i)
		}
	}
}
