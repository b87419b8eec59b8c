package contract_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"testing"

	"vigil.dev/pkg/contract"
)

// TestCommandResultsRoundTrip: each command result type encodes to the
// JSON of the map[string]any control built before the type existed (same
// keys, same values, keys absent where the map left them out), and keeps
// that shape through a decode and another encode.
func TestCommandResultsRoundTrip(t *testing.T) {
	gap := contract.GapFill{"BTC-USD": {contract.TF1m: 3}}
	noGap := contract.GapFill{}
	candles := map[contract.Timeframe]int{contract.TF1h: 300, contract.TF4h: 75}
	changes := contract.SettingsChanges{Symbols: contract.SymbolChanges{Added: []string{"SOL-USD"}, Removed: []string{}},
		Mode: &contract.ModeChange{From: contract.ModePositionMonitor, To: contract.ModeScalperMACDV}, Rules: contract.RuleCounts{Before: 1, After: 0}, Indicators: []string{"rsi"}}
	payload := contract.ClearCachePayload{Scope: contract.ScopeSymbol, Symbol: "BTC-USD"}
	payloadJSON, _ := json.Marshal(payload)
	inputs := contract.PlanInputs{Command: contract.CmdClearCache, Payload: payloadJSON, Exchange: 7, Keys: map[string]int{"candles": 2}}
	formerInputs := map[string]any{"command": "clear-cache", "payload": payload, "exchange": 7, "keys": map[string]int{"candles": 2}}
	dry := contract.DryRunResult{DryRun: true, Plan: inputs.Hash(), Inputs: inputs}
	services := map[string]contract.InstancePlans{"vigil-indicators": {"I1": json.RawMessage(`{"owner":true,"dropped":2}`)}}
	withServices := dry
	withServices.Services = services
	progress := json.RawMessage(`{"timeframes_done":0,"timeframes":2,"candles":{}}`)

	cases := []struct {
		name   string
		v      any
		former map[string]any
		back   func([]byte) (any, error)
	}{
		{"pause", contract.PauseResult{Status: contract.ResultPaused}, map[string]any{"status": "paused"}, decodeAs[contract.PauseResult]},
		{"already paused", contract.PauseResult{Status: contract.ResultAlreadyPaused}, map[string]any{"status": "already_paused"}, decodeAs[contract.PauseResult]},
		{"resumed", contract.ResumeResult{Status: contract.ResultResumed, Symbols: []string{"BTC-USD"}, GapFilled: &gap},
			map[string]any{"status": "resumed", "symbols": []string{"BTC-USD"}, "gap_filled": gap}, decodeAs[contract.ResumeResult]},
		{"resumed, no gap", contract.ResumeResult{Status: contract.ResultResumed, Symbols: []string{"BTC-USD"}, GapFilled: &noGap},
			map[string]any{"status": "resumed", "symbols": []string{"BTC-USD"}, "gap_filled": noGap}, decodeAs[contract.ResumeResult]},
		{"already running", contract.ResumeResult{Status: contract.ResultAlreadyRunning, Symbols: []string{"BTC-USD"}},
			map[string]any{"status": "already_running", "symbols": []string{"BTC-USD"}}, decodeAs[contract.ResumeResult]},
		{"reloaded", contract.ReloadSettingsResult{Reloaded: true, Revision: 3, Changes: changes},
			map[string]any{"reloaded": true, "revision": 3, "changes": changes}, decodeAs[contract.ReloadSettingsResult]},
		{"reload plan", contract.ReloadSettingsPlan{ReloadSettingsResult: contract.ReloadSettingsResult{Revision: 3, Changes: changes}, DryRunResult: withServices},
			map[string]any{"reloaded": false, "revision": 3, "changes": changes, "dry_run": true, "plan": inputs.Hash(), "inputs": formerInputs, "services": services},
			decodeAs[contract.ReloadSettingsPlan]},
		{"switched", contract.SwitchModeResult{Switched: true, From: contract.ModePositionMonitor, To: contract.ModeScalperMACDV},
			map[string]any{"switched": true, "from": "position-monitor", "to": "scalper-macdv"}, decodeAs[contract.SwitchModeResult]},
		{"already in mode", contract.SwitchModeResult{Status: contract.ResultAlreadyInMode, Mode: contract.ModeScalperMACDV},
			map[string]any{"switched": false, "status": "already_in_mode", "mode": "scalper-macdv"}, decodeAs[contract.SwitchModeResult]},
		{"switch plan", contract.SwitchModePlan{SwitchModeResult: contract.SwitchModeResult{From: contract.ModePositionMonitor, To: contract.ModeScalperMACDV, Revision: 4}, DryRunResult: withServices},
			map[string]any{"switched": false, "from": "position-monitor", "to": "scalper-macdv", "revision": 4, "dry_run": true, "plan": inputs.Hash(), "inputs": formerInputs, "services": services},
			decodeAs[contract.SwitchModePlan]},
		{"already in mode plan", contract.SwitchModePlan{SwitchModeResult: contract.SwitchModeResult{Status: contract.ResultAlreadyInMode, Mode: contract.ModeScalperMACDV}, DryRunResult: dry},
			map[string]any{"switched": false, "status": "already_in_mode", "mode": "scalper-macdv", "dry_run": true, "plan": inputs.Hash(), "inputs": formerInputs},
			decodeAs[contract.SwitchModePlan]},
		{"backfilled", contract.ForceBackfillResult{Backfilled: true, Symbol: "BTC-USD", Candles: candles},
			map[string]any{"backfilled": true, "symbol": "BTC-USD", "candles": candles}, decodeAs[contract.ForceBackfillResult]},
		{"backfill stopped in a timeframe", contract.ForceBackfillResult{Symbol: "BTC-USD", Candles: candles, CancelledBy: "p1",
			Progress: &contract.BackfillProgress{TimeframesDone: 1, Timeframes: 2, Candles: candles,
				StoppedTimeframe: &contract.StoppedTimeframe{Timeframe: contract.TF4h, Pages: 0, PagesTotal: 3}}},
			map[string]any{"backfilled": false, "symbol": "BTC-USD", "candles": candles, "cancelled_by": "p1",
				"progress": map[string]any{"timeframes_done": 1, "timeframes": 2, "timeframe": "4h", "pages": 0, "pages_total": 3, "candles": candles}},
			decodeAs[contract.ForceBackfillResult]},
		{"backfill stopped, recomputed", contract.ForceBackfillResult{Symbol: "BTC-USD", Candles: map[contract.Timeframe]int{}, CancelledBy: "c1",
			Progress: &contract.BackfillProgress{Timeframes: 1, Candles: map[contract.Timeframe]int{}, FeedNotConfirmed: "timeout",
				StoppedTimeframe: &contract.StoppedTimeframe{Timeframe: contract.TF1h, Pages: 1, PagesTotal: 3, Recomputed: contract.TF1h}}},
			map[string]any{"backfilled": false, "symbol": "BTC-USD", "candles": map[string]int{}, "cancelled_by": "c1",
				"progress": map[string]any{"timeframes_done": 0, "timeframes": 1, "timeframe": "1h", "pages": 1, "pages_total": 3, "candles": map[string]int{},
					"recomputed": "1h", "feed_not_confirmed": "timeout"}},
			decodeAs[contract.ForceBackfillResult]},
		{"backfill stopped between timeframes", contract.ForceBackfillResult{Symbol: "BTC-USD", Candles: candles, CancelledBy: "p1",
			Progress: &contract.BackfillProgress{TimeframesDone: 2, Timeframes: 2, Candles: candles}},
			map[string]any{"backfilled": false, "symbol": "BTC-USD", "candles": candles, "cancelled_by": "p1",
				"progress": map[string]any{"timeframes_done": 2, "timeframes": 2, "candles": candles}},
			decodeAs[contract.ForceBackfillResult]},
		{"backfill plan", contract.ForceBackfillPlan{Symbol: "BTC-USD", Pages: 4, Requests: 4, EstimatedSeconds: 0.4,
			Timeframes: map[contract.Timeframe]map[string]contract.InstancePlans{contract.TF1h: services}, DryRunResult: dry},
			map[string]any{"backfilled": false, "symbol": "BTC-USD", "pages": 4, "requests": 4, "estimated_seconds": 0.4,
				"timeframes": map[string]any{"1h": services}, "dry_run": true, "plan": inputs.Hash(), "inputs": formerInputs},
			decodeAs[contract.ForceBackfillPlan]},
		{"superseded", contract.CancelledResult{Cancelled: true, SupersededBy: "p2"},
			map[string]any{"cancelled": true, "superseded_by": "p2"}, decodeAs[contract.CancelledResult]},
		{"cancelled while queued", contract.CancelledResult{Cancelled: true, CancelledBy: "c1"},
			map[string]any{"cancelled": true, "cancelled_by": "c1"}, decodeAs[contract.CancelledResult]},
		{"queued backfill, paused", contract.BackfillCancelledResult{CancelledResult: contract.CancelledResult{CancelledBy: "p1"}},
			map[string]any{"backfilled": false, "cancelled_by": "p1"}, decodeAs[contract.BackfillCancelledResult]},
		{"requeued backfill, cancelled", contract.BackfillCancelledResult{CancelledResult: contract.CancelledResult{Cancelled: true, CancelledBy: "c1"}},
			map[string]any{"backfilled": false, "cancelled": true, "cancelled_by": "c1"}, decodeAs[contract.BackfillCancelledResult]},
		{"cancel of a queued command", contract.CancelResult{Cancelled: true, ID: "f1"},
			map[string]any{"cancelled": true, "id": "f1"}, decodeAs[contract.CancelResult]},
		{"cancel of a job", contract.CancelResult{Cancelled: true, ID: "f1", Progress: progress},
			map[string]any{"cancelled": true, "id": "f1", "progress": progress}, decodeAs[contract.CancelResult]},
		{"cleared", contract.ClearCacheResult{ClearedKeys: contract.ClearedKeys{Cleared: true, Scope: contract.ScopeAll, Exchange: 7}, DeletedCount: 12},
			map[string]any{"cleared": true, "scope": "all", "exchange": 7, "deletedCount": 12}, decodeAs[contract.ClearCacheResult]},
		{"clear failed halfway", contract.ClearCacheResult{ClearedKeys: contract.ClearedKeys{Scope: contract.ScopeTimeframe, Symbol: "BTC-USD", Timeframe: contract.TF1h, Exchange: 7}},
			map[string]any{"cleared": false, "scope": "timeframe", "symbol": "BTC-USD", "timeframe": "1h", "exchange": 7, "deletedCount": 0}, decodeAs[contract.ClearCacheResult]},
		{"clear plan", contract.ClearCachePlan{ClearedKeys: contract.ClearedKeys{Scope: contract.ScopeSymbol, Symbol: "BTC-USD", Exchange: 7},
			Keys: map[string]int{"candles": 2}, WouldDeleteCount: 2, DryRunResult: withServices},
			map[string]any{"cleared": false, "scope": "symbol", "symbol": "BTC-USD", "exchange": 7, "keys": map[string]int{"candles": 2}, "wouldDeleteCount": 2,
				"dry_run": true, "plan": inputs.Hash(), "inputs": formerInputs, "services": services},
			decodeAs[contract.ClearCachePlan]},
	}
	var trips []roundTrip
	for _, c := range cases {
		got, err := json.Marshal(c.v)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		former, err := json.Marshal(c.former)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if canon, want := canonical(t, got), canonical(t, former); canon != want {
			t.Errorf("%s: %s, want the former map's %s", c.name, canon, want)
		}
		trips = append(trips, roundTrip{c.name, c.v, string(got), c.back})
	}
	checkRoundTrips(t, trips)
}

// canonical is the JSON b with the keys of every object sorted, as
// encoding/json writes a map (the former maps held structs and raw JSON).
func canonical(t *testing.T, b []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestPlanInputsHashUnchanged: the plan hash of PlanInputs, whose payload
// is the payload's JSON, is the hash of the inputs as control built them
// with the payload itself, so a plan made before the type existed still
// matches.
func TestPlanInputsHashUnchanged(t *testing.T) {
	payload := contract.SwitchModePayload{Mode: contract.ModeScalperMACDV}
	before := struct {
		Command       contract.Command `json:"command"`
		Payload       contract.Payload `json:"payload"`
		State         string           `json:"state,omitempty"`
		StateRevision int64            `json:"state_revision,omitempty"`
		Next          string           `json:"next,omitempty"`
		Settings      string           `json:"settings,omitempty"`
		Exchange      int64            `json:"exchange,omitempty"`
		Keys          map[string]int   `json:"keys,omitempty"`
	}{Command: contract.CmdSwitchMode, Payload: payload, State: "s", StateRevision: 3, Next: "n", Exchange: 7}
	b, _ := json.Marshal(before)
	sum := sha256.Sum256(b)
	p, _ := json.Marshal(payload)
	now := contract.PlanInputs{Command: contract.CmdSwitchMode, Payload: p, State: "s", StateRevision: 3, Next: "n", Exchange: 7}
	if got := now.Hash(); got != hex.EncodeToString(sum[:]) {
		t.Errorf("hash %s, want %s", got, hex.EncodeToString(sum[:]))
	}
}

// A force-backfill that a pause stopped in its second timeframe says how
// far it got; the feed kept the pages it wrote and the series was
// recomputed.
func ExampleForceBackfillResult() {
	result := `{"backfilled":false,"symbol":"BTC-USD","candles":{"1h":300,"4h":25},"cancelled_by":"01JDPAUSE",
		"progress":{"timeframes_done":1,"timeframes":2,"timeframe":"4h","pages":1,"pages_total":3,"recomputed":"4h","candles":{"1h":300,"4h":25}}}`
	var r contract.ForceBackfillResult
	if err := json.Unmarshal([]byte(result), &r); err != nil {
		fmt.Println(err)
		return
	}
	p := r.Progress
	fmt.Printf("stopped by %s after %d of %d timeframes\n", r.CancelledBy, p.TimeframesDone, p.Timeframes)
	if p.StoppedTimeframe != nil {
		fmt.Printf("%s: %d of %d pages, %d candles kept, recomputed %v\n", p.Timeframe, p.Pages, p.PagesTotal, r.Candles[p.Timeframe], p.Recomputed == p.Timeframe)
	}
	// Output:
	// stopped by 01JDPAUSE after 1 of 2 timeframes
	// 4h: 1 of 3 pages, 25 candles kept, recomputed true
}
