package daemon

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
)

// positionUpdate is a closed-bar update of a position-monitor series with
// the values of the mode's default indicators.
func positionUpdate() contract.IndicatorUpdate {
	return contract.IndicatorUpdate{
		SeriesID: contract.SeriesID{User: "alice", UserID: 7, ExchangeID: 17, Symbol: "BTC-USD", Timeframe: contract.TF1h},
		Start:    base, Closed: true, Version: base*1_000_000 + 3_600_000_000, Close: 100_512.25,
		Values: map[string]contract.Fields{
			"ema_20": {"value": 100_123.5}, "ema_50": {"value": 99_876.25}, "ema_200": {"value": 97_001.125},
			"rsi_14": {"value": 61.37}, "atr_14": {"value": 812.5},
			"macd_12_26_9": {"macd": 120.5, "signal": 98.25, "hist": 22.25},
			"bb_20_2":      {"upper": 101_900.5, "middle": 100_100.25, "lower": 98_300.75},
		},
		ComputedAt: time.Unix(base+3600, 0).UTC(),
	}
}

func TestDecodeUpdate(t *testing.T) {
	good := positionUpdate()
	series := good.SeriesID
	encode := func(u contract.IndicatorUpdate) []byte {
		doc, err := json.Marshal(u)
		if err != nil {
			t.Fatal(err)
		}
		return doc
	}
	otherSymbol, noUserID := good, good
	otherSymbol.Symbol = "ETH-USD"
	noUserID.UserID = 0
	for _, tc := range []struct {
		name string
		data []byte
		bad  bool
	}{
		{"the update of the subject's series", encode(good), false},
		{"not JSON", []byte(`{"user":`), true},
		{"another series than the subject's", encode(otherSymbol), true},
		{"a series without a user id", encode(noUserID), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := decodeUpdate(series, tc.data)
			if tc.bad {
				if !errors.Is(err, ErrBadUpdate) {
					t.Fatalf("error %v, want %v", err, ErrBadUpdate)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.SeriesID != series || u.Close != good.Close || u.Values["macd_12_26_9"]["hist"] != 22.25 || !u.ComputedAt.Equal(good.ComputedAt) {
				t.Fatalf("decoded %+v, want %+v", u, good)
			}
		})
	}
}

// BenchmarkDecodeUpdate measures decoding one position-monitor update,
// the largest part of the CPU vigil-alerts spends per update.
func BenchmarkDecodeUpdate(b *testing.B) {
	u := positionUpdate()
	doc, err := json.Marshal(u)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeUpdate(u.SeriesID, doc); err != nil {
			b.Fatal(err)
		}
	}
}
