package history_test

import (
	"context"
	"os"
	"reflect"
	"testing"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/alerts/internal/history"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// t0 is the start of the test bars.
const t0 = int64(1_767_225_600)

var series = contract.SeriesID{User: "alice", UserID: 3, ExchangeID: 4, Symbol: "BTC-USD", Timeframe: contract.TF1m}

func TestClosedBars(t *testing.T) {
	ctx := context.Background()
	rdb, err := redisstore.NewClient(ctx, testenv.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	store := redisstore.New(rdb, 0)
	candle := func(start, version int64, close float64, closed bool) {
		t.Helper()
		c := contract.Candle{SeriesID: series, Start: start, Open: close, High: close, Low: close, Close: close, Volume: 1, Closed: closed, Version: version}
		if _, err := store.WriteCandle(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	point := func(name string, start, version int64, closed bool, v float64) {
		t.Helper()
		if _, err := store.WriteIndicator(ctx, series, name, redisstore.IndicatorPoint{Start: start, Version: version, Closed: closed, Fields: contract.Fields{"value": v}}); err != nil {
			t.Fatal(err)
		}
	}
	candle(t0, 1, 99, true)     // before from
	candle(t0+60, 2, 100, true) // rsi and ema
	point("rsi_14", t0+60, 2, true, 50)
	point("ema_20", t0+60, 3, true, 101) // a later version than the candle
	candle(t0+120, 4, 102, true)         // rsi only: ema still warming
	point("rsi_14", t0+120, 4, true, 55)
	candle(t0+180, 5, 103, true) // rsi's point still in progress
	point("rsi_14", t0+180, 5, false, 56)
	point("rsi_14", t0+240, 6, true, 57) // no candle
	candle(t0+300, 7, 104, false)        // candle in progress
	point("rsi_14", t0+300, 7, true, 58)
	point("macd_12_26_9", t0+60, 2, true, 1) // not asked for

	got, err := history.New(store).ClosedBars(ctx, series, []string{"rsi_14", "ema_20"}, t0+60)
	if err != nil {
		t.Fatal(err)
	}
	want := []contract.IndicatorUpdate{
		{SeriesID: series, Start: t0 + 60, Closed: true, Version: 3, Close: 100,
			Values: map[string]contract.Fields{"rsi_14": {"value": 50}, "ema_20": {"value": 101}}},
		{SeriesID: series, Start: t0 + 120, Closed: true, Version: 4, Close: 102,
			Values: map[string]contract.Fields{"rsi_14": {"value": 55}}},
		{SeriesID: series, Start: t0 + 180, Closed: true, Version: 5, Close: 103, Values: map[string]contract.Fields{}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ClosedBars\n got %+v\nwant %+v", got, want)
	}

	for name, tc := range map[string]struct {
		series     contract.SeriesID
		indicators []string
	}{
		"series without a user id":  {contract.SeriesID{User: "alice", ExchangeID: 4, Symbol: "BTC-USD", Timeframe: contract.TF1m}, nil},
		"indicator with a wildcard": {series, []string{"rsi_*"}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := history.New(store).ClosedBars(ctx, tc.series, tc.indicators, 0); err == nil {
				t.Fatal("read a key built from invalid parts")
			}
		})
	}
}
