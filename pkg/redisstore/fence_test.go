package redisstore_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
)

// TestFencedWritesOfAFormerOwnerAreRefused: a partition's first owner
// takes an epoch and writes; a new owner takes the next epoch and writes;
// the former owner's late writes are refused with a *FencedError naming
// the series, even with a newer version and for a bar nobody wrote yet,
// and the new owner's values stay untouched. The new owner keeps writing,
// an unfenced write is only versioned, and a fence without an epoch (a
// writer that does not own the partition) is refused without a call.
func TestFencedWritesOfAFormerOwnerAreRefused(t *testing.T) {
	store, rdb := newStore(t, 0)
	ctx := context.Background()
	key := redisstore.FenceKey(contract.ServiceIndicators, 7)
	other := series
	other.Symbol = "ETH-USD"
	update := func(id contract.SeriesID, start, version int64, value float64) contract.IndicatorUpdate {
		return contract.IndicatorUpdate{SeriesID: id, Start: start, Version: version, Closed: true,
			Values: map[string]contract.Fields{"ema_20": {"value": value}, "rsi_14": {"value": value / 2}}}
	}
	fenceOf := func(epoch int64) func(contract.SeriesID) redisstore.Fence {
		return func(id contract.SeriesID) redisstore.Fence {
			if id == other {
				return redisstore.Fence{} // unfenced
			}
			return redisstore.Fence{Key: key, Epoch: epoch}
		}
	}
	stored := func(start int64) map[string]redisstore.IndicatorPoint {
		t.Helper()
		out := map[string]redisstore.IndicatorPoint{}
		for _, name := range []string{"ema_20", "rsi_14"} {
			points, err := store.Indicator(ctx, series, name, start, start)
			if err != nil {
				t.Fatal(err)
			}
			if len(points) == 1 {
				out[name] = points[0]
			}
		}
		return out
	}

	old, err := store.NewEpoch(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.WriteIndicatorUpdatesFenced(ctx, []contract.IndicatorUpdate{update(series, 60, 10, 1)}, fenceOf(old)); err != nil {
		t.Fatalf("first owner's write: %v", err)
	}
	current, err := store.NewEpoch(ctx, key)
	if err != nil || current <= old {
		t.Fatalf("new epoch %d after %d: %v", current, old, err)
	}
	if err := store.WriteIndicatorUpdatesFenced(ctx, []contract.IndicatorUpdate{update(series, 60, 20, 2)}, fenceOf(current)); err != nil {
		t.Fatalf("new owner's write: %v", err)
	}

	// The former owner's late writes: a newer version of the same bar, a
	// bar nobody wrote, next to an unfenced series that is written.
	late := []contract.IndicatorUpdate{update(series, 60, 30, 666), update(series, 120, 30, 666), update(other, 60, 30, 5)}
	err = store.WriteIndicatorUpdatesFenced(ctx, late, fenceOf(old))
	var fenced *redisstore.FencedError
	if !errors.Is(err, redisstore.ErrFenced) || !errors.As(err, &fenced) || !slices.Equal(fenced.Series, []contract.SeriesID{series}) {
		t.Fatalf("former owner's write: %v, want a FencedError naming %s only", err, series)
	}
	for name, p := range stored(60) {
		if p.Version != 20 || p.Fields["value"] == 666 {
			t.Errorf("%s of bar 60 is %+v, want the new owner's version 20", name, p)
		}
	}
	if got := stored(120); len(got) != 0 {
		t.Errorf("bar 120 was written by the former owner: %+v", got)
	}
	if points, err := store.Indicator(ctx, other, "ema_20", 60, 60); err != nil || len(points) != 1 || points[0].Version != 30 {
		t.Errorf("the unfenced series next to the refused ones: %+v, %v", points, err)
	}
	if epoch, err := rdb.Get(ctx, key).Int64(); err != nil || epoch != current {
		t.Errorf("fence holds %d (%v), want the newest epoch %d", epoch, err, current)
	}

	// The new owner goes on; a writer without an epoch is refused.
	if err := store.WriteIndicatorUpdatesFenced(ctx, []contract.IndicatorUpdate{update(series, 120, 40, 3)}, fenceOf(current)); err != nil {
		t.Fatalf("new owner's next write: %v", err)
	}
	if err := store.WriteIndicatorUpdatesFenced(ctx, []contract.IndicatorUpdate{update(series, 120, 50, 666)}, fenceOf(0)); !errors.Is(err, redisstore.ErrFenced) {
		t.Fatalf("write without an epoch: %v, want ErrFenced", err)
	}
	if p := stored(120)["ema_20"]; p.Version != 40 || p.Fields["value"] != 3 {
		t.Errorf("bar 120 is %+v, want the new owner's version 40", p)
	}

	// A write with an epoch newer than the fence (the fence key was lost,
	// e.g. a Redis restart without persistence) raises the fence.
	if err := rdb.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}
	if err := store.WriteIndicatorUpdatesFenced(ctx, []contract.IndicatorUpdate{update(series, 180, 60, 4)}, fenceOf(current)); err != nil {
		t.Fatal(err)
	}
	if err := store.WriteIndicatorUpdatesFenced(ctx, []contract.IndicatorUpdate{update(series, 180, 70, 666)}, fenceOf(old)); !errors.Is(err, redisstore.ErrFenced) {
		t.Fatalf("former owner's write after the fence was raised again: %v, want ErrFenced", err)
	}

	// Unfenced writes stay versioned only.
	if err := store.WriteIndicatorUpdates(ctx, []contract.IndicatorUpdate{update(series, 60, 15, 9)}); err != nil {
		t.Fatal(err)
	}
	if p := stored(60)["ema_20"]; p.Version != 20 {
		t.Errorf("an older unfenced version replaced bar 60: %+v", p)
	}
}
