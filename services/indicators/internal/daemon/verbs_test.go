package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/testenv"
)

// results decodes the result of each reply into T.
func results[T any](t *testing.T, replies []contract.SvcReply) []T {
	t.Helper()
	out := make([]T, len(replies))
	for i, r := range replies {
		if !r.OK {
			t.Fatalf("%s answered %+v", r.Instance, r.Error)
		}
		if err := json.Unmarshal(r.Result, &out[i]); err != nil {
			t.Fatalf("%s: result %s: %v", r.Instance, r.Result, err)
		}
	}
	return out
}

// TestControlVerbs drives pause, resume, forget, recompute, apply and
// status on two instances. Both users' 1h series are owned by the same
// instance, so its sequential consumer orders their candles.
func TestControlVerbs(t *testing.T) {
	h := newHarness(t)
	h.startInstance("one")
	h.startInstance("two")
	ids := h.waitMembers(2)
	members := []string{ids["one"], ids["two"]}
	var a, b contract.SeriesID // alice's and bob's 1h series
	for i := 0; ; i++ {
		a = contract.SeriesID{User: "alice", UserID: 21, ExchangeID: 1, Symbol: fmt.Sprintf("BTC%d-USD", i), Timeframe: contract.TF1h}
		b = contract.SeriesID{User: "bob", UserID: 22, ExchangeID: 1, Symbol: a.Symbol, Timeframe: contract.TF1h}
		if ownerOf(members, a) == ownerOf(members, b) {
			break
		}
	}
	owner := ownerOf(members, a)
	stateA := h.putState(contract.DesiredState{User: "alice", UserID: a.UserID, ExchangeID: a.ExchangeID, Mode: contract.ModePositionMonitor, Symbols: []string{a.Symbol}})
	stateB := h.putState(contract.DesiredState{User: "bob", UserID: b.UserID, ExchangeID: b.ExchangeID, Mode: contract.ModePositionMonitor, Symbols: []string{b.Symbol}})
	dataA, dataB := candles(t, a, 300, 1), candles(t, b, 300, 1.2)
	feedBoth := func(from, to int) {
		for i := from; i < to; i++ {
			h.feed(dataA[i], dataB[i])
		}
		h.waitUpdate(b, dataB[to-1].Start, true)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		n := 0
		for _, st := range h.statuses(2) {
			n += st.Users["alice"].Series + st.Users["bob"].Series
		}
		if n != 6 {
			return fmt.Errorf("%d series running, want 6", n)
		}
		return nil
	})
	feedBoth(0, 100)
	h.waitUpdate(a, dataA[99].Start, true)
	updatesOf := func(id contract.SeriesID) int {
		return len(h.received(func(r received) bool { return r.SeriesID == id }))
	}

	t.Run("pause", func(t *testing.T) {
		h := h.sub(t)
		// Candles of alice are in flight while the pause arrives; once it
		// is answered, none of them may produce a value.
		for i := 100; i < 140; i++ {
			h.feed(dataA[i])
		}
		paused := stateA
		paused.Paused = true
		var total int
		for _, r := range results[contract.IndicatorsSeriesResult](t, h.request(contract.VerbPause, contract.SvcRequest{User: "alice", State: &paused}, 2)) {
			total += r.Series
		}
		if total != 3 {
			t.Fatalf("pause stopped %d series, want 3 (1h, 4h, 1d)", total)
		}
		stateA = h.putState(paused)
		after := updatesOf(a)
		// How many of the in-flight candles were done before the pause is a
		// matter of timing; what is stored once it was answered may not change.
		storedAtPause := h.stored(a, "ema_20")
		for i := 100; i <= 140; i++ {
			h.feed(dataB[i])
		}
		h.waitUpdate(b, dataB[140].Start, true)
		if n := updatesOf(a); n != after {
			t.Fatalf("alice got %d updates after pause", n-after)
		}
		sameVersion := func(x, y redisstore.IndicatorPoint) bool { return x.Version == y.Version }
		if p := h.stored(a, "ema_20"); !maps.EqualFunc(p, storedAtPause, sameVersion) {
			t.Fatalf("alice's stored values changed while paused: %d bars at the pause, %d now", len(storedAtPause), len(p))
		}
		for _, st := range h.statuses(2) {
			if us := st.Users["alice"]; !us.Paused || us.Series != 0 {
				t.Fatalf("%s: alice %+v", st.Name, us)
			}
			if st.Users["bob"].Paused {
				t.Fatalf("%s: bob paused", st.Name)
			}
		}
	})

	t.Run("resume", func(t *testing.T) {
		h := h.sub(t)
		h.feed(dataA[140]) // stored by the feed while alice is paused
		running := stateA
		running.Paused = false
		var total int
		for _, r := range results[contract.IndicatorsSeriesResult](t, h.request(contract.VerbResume, contract.SvcRequest{User: "alice", State: &running}, 2)) {
			total += r.Series
		}
		if total != 3 {
			t.Fatalf("resume started %d series, want 3", total)
		}
		stateA = h.putState(running)
		h.waitUpdate(a, dataA[140].Start, true) // the rebuild republishes the newest bar
		feedBoth(141, 200)
		h.waitUpdate(a, dataA[199].Start, true)
		for _, name := range positionMonitor {
			h.checkStored(a, name, dataA[:200])
		}
	})

	t.Run("recompute", func(t *testing.T) {
		h := h.sub(t)
		// A backfill replaces bars 50-59 in Redis with newer versions.
		for i := 50; i < 60; i++ {
			dataB[i].Close *= 0.9
			dataB[i].Low = min(dataB[i].Low, dataB[i].Close)
			dataB[i].Version = time.Now().UnixMicro()
			dataB[i].Source = "rest"
		}
		if n, err := h.store.WriteCandles(context.Background(), dataB[50:60]); err != nil || n != 10 {
			t.Fatalf("backfill wrote %d: %v", n, err)
		}
		replies := results[contract.IndicatorsRecomputeResult](t, h.request(contract.VerbRecompute, contract.SvcRequest{User: "bob",
			Args: mustJSON(t, contract.RecomputeArgs{Series: b})}, 2))
		var owners, bars int
		for _, r := range replies {
			if r.Owner {
				owners++
				bars = r.Bars
			}
		}
		if owners != 1 || bars != 200 {
			t.Fatalf("recompute: %+v, want one owner with 200 bars", replies)
		}
		for _, name := range positionMonitor {
			h.checkStored(b, name, dataB[:200])
		}
		feedBoth(200, 210)
		for _, name := range positionMonitor {
			h.checkStored(b, name, dataB[:210])
		}
	})

	t.Run("apply", func(t *testing.T) {
		h := h.sub(t)
		changed := stateB
		changed.Revision++
		changed.Settings.Indicators = contract.IndicatorParams{EMA: []int{9, 21}}
		var change contract.IndicatorsApplyResult
		for _, r := range results[contract.IndicatorsApplyResult](t, h.request(contract.VerbApply, contract.SvcRequest{User: "bob", State: &changed}, 2)) {
			change.Recomputed += r.Recomputed
			change.Series += r.Series
		}
		if change.Recomputed != 3 || change.Series != 3 {
			t.Fatalf("apply: %+v, want 3 series recomputed", change)
		}
		stateB = h.putState(changed)
		for _, name := range []string{"ema_9", "ema_21"} {
			h.checkStored(b, name, dataB[:210])
		}
		feedBoth(210, 220)
		u := h.waitUpdate(b, dataB[219].Start, true)
		if u.Values["ema_9"] == nil || u.Values["ema_21"] == nil || u.Values["ema_20"] != nil {
			t.Fatalf("update after apply has %v", u.Values)
		}
		for _, name := range []string{"ema_9", "ema_21", "rsi_14", "macd_12_26_9"} {
			h.checkStored(b, name, dataB[:220])
		}

		// A mode switch drops the 1h, 4h and 1d series for 1m and 5m.
		switched := stateB
		switched.Mode = contract.ModeScalperMACDV
		var sw contract.IndicatorsApplyResult
		for _, r := range results[contract.IndicatorsApplyResult](t, h.request(contract.VerbApply, contract.SvcRequest{User: "bob", State: &switched}, 2)) {
			sw.Added += r.Added
			sw.Removed += r.Removed
			sw.Series += r.Series
		}
		if sw.Added != 2 || sw.Removed != 3 || sw.Series != 2 {
			t.Fatalf("switch: %+v, want 2 added, 3 removed, 2 running", sw)
		}
		stateB = h.putState(switched)
	})

	t.Run("forget", func(t *testing.T) {
		h := h.sub(t)
		args := contract.ForgetArgs{UserID: a.UserID, ExchangeID: a.ExchangeID, Scope: contract.ScopeSymbol, Symbol: a.Symbol}
		var total int
		for _, r := range results[contract.IndicatorsSeriesResult](t, h.request(contract.VerbForget, contract.SvcRequest{User: "alice", Args: mustJSON(t, args)}, 2)) {
			total += r.Series
		}
		if total != 3 {
			t.Fatalf("forget dropped %d series, want 3", total)
		}
		// A candle between forget and the clear-cache's deletion.
		h.feed(dataA[220])
		h.waitUpdate(a, dataA[220].Start, true)
		if _, err := h.store.Clear(context.Background(), args.Selector()); err != nil {
			t.Fatal(err)
		}
		// Fresh history after the clear: the values must come from it
		// alone, not from state read before the deletion.
		fresh := candles(t, a, 300, 2)[221:300]
		h.feed(fresh...)
		h.waitUpdate(a, fresh[len(fresh)-1].Start, true)
		for _, name := range positionMonitor {
			h.checkStored(a, name, fresh)
		}
		if p := h.stored(a, "ema_20"); len(p) != len(fresh)-19 {
			t.Fatalf("%d ema_20 points stored, want %d (only the fresh bars)", len(p), len(fresh)-19)
		}
	})

	t.Run("status", func(t *testing.T) {
		h := h.sub(t)
		sts := h.statuses(2)
		var alice, bob int
		for _, st := range sts {
			alice += st.Users["alice"].Series
			bob += st.Users["bob"].Series
			if st.Instance == owner {
				us := st.Users["alice"]
				if us.LastCandle == nil || us.LagMs <= 0 || us.Mode != contract.ModePositionMonitor {
					t.Fatalf("owner's status of alice: %+v", us)
				}
			}
		}
		// alice's forgotten 4h and 1d series come back with their next
		// candle; her 1h series is running again.
		if alice != 1 || bob != 2 {
			t.Fatalf("status counts alice %d, bob %d series, want 1 and 2", alice, bob)
		}
	})
}

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
