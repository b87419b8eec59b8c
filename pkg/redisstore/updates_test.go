package redisstore_test

import (
	"context"
	"errors"
	"testing"

	"vigil.dev/pkg/contract"
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
