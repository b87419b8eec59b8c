package redisstore_test

import (
	"context"
	"slices"
	"testing"

	"vigil.dev/pkg/contract"
)

func TestWriteCandlesEachReportsEveryCandle(t *testing.T) {
	store, _ := newStore(t, 0)
	ctx := context.Background()
	if _, err := store.WriteCandlesEach(ctx, []contract.Candle{candle(60, 5, 10)}); err != nil {
		t.Fatal(err)
	}
	got, err := store.WriteCandlesEach(ctx, []contract.Candle{
		candle(60, 4, 11),  // older than stored: kept out
		candle(60, 6, 12),  // newer: written
		candle(120, 1, 13), // new bar: written
		candle(120, 1, 14), // same version again: kept out
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{false, true, true, false}; !slices.Equal(got, want) {
		t.Fatalf("written = %v, want %v", got, want)
	}
	stored, err := store.Candles(ctx, series, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 2 || stored[0].Close != 12 || stored[1].Close != 13 {
		t.Fatalf("stored = %+v, want closes 12 and 13", stored)
	}
	bad := candle(180, 1, 15)
	bad.High = -1
	if _, err := store.WriteCandlesEach(ctx, []contract.Candle{candle(240, 1, 1), bad}); err == nil {
		t.Fatal("an invalid candle was accepted")
	}
	if stored, _ := store.Candles(ctx, series, 240, 240); len(stored) != 0 {
		t.Fatalf("a batch with an invalid candle wrote %+v", stored)
	}
}
