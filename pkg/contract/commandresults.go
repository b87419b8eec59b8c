package contract

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// This file: the result objects of control's commands (the "result" of
// vigil.result.<user>.<id>, ARCHITECTURE.md §5 and docs/design.md). A
// failed reload-settings or switch-mode that rolled back has a Rollback
// instead (types.go).

// The status of a PauseResult, ResumeResult or SwitchModeResult.
const (
	ResultPaused         = "paused"
	ResultAlreadyPaused  = "already_paused"
	ResultResumed        = "resumed"
	ResultAlreadyRunning = "already_running"
	ResultAlreadyInMode  = "already_in_mode"
)

// PauseResult is the result of pause.
type PauseResult struct {
	// Status is ResultPaused, or ResultAlreadyPaused when the user was
	// paused already (no steps ran).
	Status string `json:"status"`
}

// ResumeResult is the result of resume.
type ResumeResult struct {
	// Status is ResultResumed, or ResultAlreadyRunning when the user ran
	// already with the same symbols (no steps ran).
	Status string `json:"status"`
	// Symbols are the user's symbols afterwards.
	Symbols []string `json:"symbols"`
	// GapFilled adds up the gap fills of the feed's instances (resumed
	// only: nil when already running, an empty GapFill when nothing was
	// missing).
	GapFilled *GapFill `json:"gap_filled,omitempty"`
}

// ReloadSettingsResult is the result of reload-settings.
type ReloadSettingsResult struct {
	// Reloaded is true once every service applied Revision (false in a
	// dry run).
	Reloaded bool `json:"reloaded"`
	// Revision is the new desired-state revision.
	Revision int64 `json:"revision"`
	// Changes is what the new users.settings changed.
	Changes SettingsChanges `json:"changes"`
}

// SettingsChanges summarises what a reload-settings changed.
type SettingsChanges struct {
	Symbols SymbolChanges `json:"symbols"`
	// Mode is set when the mode changed.
	Mode *ModeChange `json:"mode,omitempty"`
	// Rules counts the rules of the (new) mode before and after.
	Rules RuleCounts `json:"rules"`
	// Indicators names the indicator parameters that changed (ema, rsi,
	// macd, ...), after defaults.
	Indicators []string `json:"indicators"`
	// Webhook is true when the webhook settings changed.
	Webhook bool `json:"webhook,omitempty"`
}

// SymbolChanges are the symbols added and removed.
type SymbolChanges struct {
	Added   []string `json:"added"`
	Removed []string `json:"removed"`
}

// ModeChange is a change of mode.
type ModeChange struct {
	From Mode `json:"from"`
	To   Mode `json:"to"`
}

// RuleCounts are rule counts of the active mode.
type RuleCounts struct {
	Before int `json:"before"`
	After  int `json:"after"`
}

// SwitchModeResult is the result of switch-mode: Switched with From and
// To, or, when the user was in the mode already, Status
// ResultAlreadyInMode with that Mode (no steps ran).
type SwitchModeResult struct {
	// Switched is true once every service runs To (false in a dry run).
	Switched bool   `json:"switched"`
	Status   string `json:"status,omitempty"`
	Mode     Mode   `json:"mode,omitempty"`
	From     Mode   `json:"from,omitempty"`
	To       Mode   `json:"to,omitempty"`
	// Revision is the desired-state revision a dry run would write
	// (absent otherwise).
	Revision int64 `json:"revision,omitempty"`
}

// ForceBackfillResult is the result of a force-backfill that ran:
// Backfilled with the candles written per timeframe, or, stopped by a
// pause or a cancel (status cancelled), CancelledBy with how far it got.
type ForceBackfillResult struct {
	Backfilled bool   `json:"backfilled"`
	Symbol     string `json:"symbol"`
	// Candles counts the candles the feed wrote per timeframe, those of
	// the timeframe a stop interrupted included.
	Candles map[Timeframe]int `json:"candles"`
	// CancelledBy is the id of the pause or cancel that stopped it.
	CancelledBy string `json:"cancelled_by,omitempty"`
	// Progress is how far a stopped backfill got.
	Progress *BackfillProgress `json:"progress,omitempty"`
}

// BackfillProgress is how far a stopped force-backfill got.
type BackfillProgress struct {
	// TimeframesDone of Timeframes were backfilled and recomputed.
	TimeframesDone int `json:"timeframes_done"`
	Timeframes     int `json:"timeframes"`
	// StoppedTimeframe is set when the stop interrupted a timeframe.
	*StoppedTimeframe
	// Candles is ForceBackfillResult.Candles.
	Candles map[Timeframe]int `json:"candles"`
	// FeedNotConfirmed says why the feed's stop (feed.cancel) was not
	// confirmed by every instance.
	FeedNotConfirmed string `json:"feed_not_confirmed,omitempty"`
}

// StoppedTimeframe is the timeframe a stopped force-backfill was working
// on: the feed kept the pages it wrote, and when it wrote some the series
// was recomputed (Recomputed) or that failed (RecomputeFailed says why).
type StoppedTimeframe struct {
	Timeframe Timeframe `json:"timeframe"`
	// Pages of PagesTotal were written.
	Pages           int       `json:"pages"`
	PagesTotal      int       `json:"pages_total"`
	Recomputed      Timeframe `json:"recomputed,omitempty"`
	RecomputeFailed string    `json:"recompute_failed,omitempty"`
}

// CancelledResult is the result of a command that ended cancelled before
// it ran: superseded by a newer pause or resume (Cancelled,
// SupersededBy), or cancelled by a cancel (Cancelled, CancelledBy).
type CancelledResult struct {
	Cancelled bool `json:"cancelled,omitempty"`
	// CancelledBy is the id of the cancel (or, for a queued
	// force-backfill, the pause) that ended it.
	CancelledBy string `json:"cancelled_by,omitempty"`
	// SupersededBy is the id of the newer pause or resume.
	SupersededBy string `json:"superseded_by,omitempty"`
}

// BackfillCancelledResult is the result of a force-backfill that ended
// cancelled before it ran: queued when a pause came (CancelledBy the
// pause, Cancelled false), or put back in the queue while a cancel waited
// for it (Cancelled, CancelledBy the cancel).
type BackfillCancelledResult struct {
	// Backfilled is false.
	Backfilled bool `json:"backfilled"`
	CancelledResult
}

// CancelResult is the result of a cancel that ended its target.
type CancelResult struct {
	// Cancelled is true.
	Cancelled bool `json:"cancelled"`
	// ID is the cancelled command's id.
	ID string `json:"id"`
	// Progress is a stopped job's progress (the BackfillProgress of its
	// ForceBackfillResult), passed on as the job reported it; absent for
	// a command that was still queued.
	Progress json.RawMessage `json:"progress,omitempty"`
}

// ClearedKeys says which keys a clear-cache cleared (or a dry run would
// clear): the user's keys of Scope (and Symbol, Timeframe) of one
// exchange account.
type ClearedKeys struct {
	// Cleared is true when every key was deleted (false in a dry run).
	Cleared   bool       `json:"cleared"`
	Scope     ClearScope `json:"scope"`
	Symbol    string     `json:"symbol,omitempty"`
	Timeframe Timeframe  `json:"timeframe,omitempty"`
	Exchange  int64      `json:"exchange"`
}

// ClearCacheResult is the result of clear-cache; a clear-cache that
// failed in Redis halfway has it too, with the keys deleted until then.
type ClearCacheResult struct {
	ClearedKeys
	DeletedCount int `json:"deletedCount"`
}

// PlanInputs are what a dry run's plan depended on (docs/design.md, "Plan
// and dry run"); the plan hash is the SHA-256 of their JSON. A real
// command given that hash recomputes them the same way and fails with
// conflict when the hash differs.
type PlanInputs struct {
	Command Command `json:"command"`
	// Payload is the command's payload without id, dry_run and plan.
	Payload json.RawMessage `json:"payload"`
	// State is the SHA-256 of the user's desired state before the
	// command (its content: paused, mode, symbols, revision, settings;
	// not when or by which command it was written); StateRevision is that
	// state's config revision, for reading.
	State         string `json:"state,omitempty"`
	StateRevision int64  `json:"state_revision,omitempty"`
	// Next is the SHA-256 of the desired state the command would write.
	Next string `json:"next,omitempty"`
	// Settings is the SHA-256 of users.settings as read (reload-settings).
	Settings string `json:"settings,omitempty"`
	// Exchange is the exchange account the command works on.
	Exchange int64 `json:"exchange,omitempty"`
	// Keys counts, by prefix, the keys a clear-cache deletes.
	Keys map[string]int `json:"keys,omitempty"`
}

// Hash is the plan hash of the inputs: 64 lowercase hex digits.
func (in PlanInputs) Hash() string {
	b, err := json.Marshal(in)
	if err != nil {
		panic(fmt.Sprintf("plan inputs not encodable: %v", err)) // every field is plain data
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// InstancePlans are the plans of one service's instances (each what the
// verb would do there, in that service's own shape), by instance id.
type InstancePlans map[string]json.RawMessage

// DryRunResult is what the result of every dry run adds to the command's
// own fields.
type DryRunResult struct {
	// DryRun is true.
	DryRun bool `json:"dry_run"`
	// Plan is the plan hash (Inputs.Hash()), for the real command's
	// "plan".
	Plan   string     `json:"plan"`
	Inputs PlanInputs `json:"inputs"`
	// Services holds, by micro service name, what each instance would do
	// (absent when no service was asked).
	Services map[string]InstancePlans `json:"services,omitempty"`
}

// ReloadSettingsPlan is the result of a reload-settings dry run.
type ReloadSettingsPlan struct {
	ReloadSettingsResult
	DryRunResult
}

// SwitchModePlan is the result of a switch-mode dry run.
type SwitchModePlan struct {
	SwitchModeResult
	DryRunResult
}

// ClearCachePlan is the result of a clear-cache dry run: the keys it
// would delete, counted by prefix, and in all.
type ClearCachePlan struct {
	ClearedKeys
	Keys             map[string]int `json:"keys"`
	WouldDeleteCount int            `json:"wouldDeleteCount"`
	DryRunResult
}

// ForceBackfillPlan is the result of a force-backfill dry run: the
// feed's pages, requests and time at its rate limit in all, and each
// timeframe's plans (feed.backfill and indicators.recompute) by service.
type ForceBackfillPlan struct {
	// Backfilled is false.
	Backfilled       bool                                   `json:"backfilled"`
	Symbol           string                                 `json:"symbol"`
	Pages            int                                    `json:"pages"`
	Requests         int                                    `json:"requests"`
	EstimatedSeconds float64                                `json:"estimated_seconds"`
	Timeframes       map[Timeframe]map[string]InstancePlans `json:"timeframes"`
	DryRunResult
}
