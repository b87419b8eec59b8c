package contract

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Ack is the reply to vigil.cmd.<user>.<command>.
type Ack struct {
	ID       string  `json:"id"`
	User     string  `json:"user"`
	Command  Command `json:"command"`
	Accepted bool    `json:"accepted"`
	// Position is the number of the user's commands ahead of this one.
	Position int    `json:"position"`
	Error    *Error `json:"error,omitempty"`
}

// Status is the final status of a command.
type Status string

// The final statuses of a command result.
const (
	StatusSucceeded Status = "succeeded"
	StatusFailed    Status = "failed"
	StatusCancelled Status = "cancelled"
)

// Step is one step of a command's sequence: a vigil.svc.<service>.<verb>
// request and how many instances answered it.
type Step struct {
	Service   string  `json:"service"`
	Verb      Verb    `json:"verb"`
	Instances int     `json:"instances"`
	Acked     int     `json:"acked"`
	Ms        float64 `json:"ms"`
	// Missing names the instances that did not confirm the step (failed
	// or missing in Outcomes).
	Missing []string `json:"missing,omitempty"`
	Error   *Error   `json:"error,omitempty"`
	// Outcomes is every instance expected or heard from, sorted by
	// instance: answered, failed (with its error) or missing.
	Outcomes []InstanceOutcome `json:"outcomes,omitempty"`
	// Compensation marks a step of a rollback: it undoes an earlier step
	// of the same command (see Rollback).
	Compensation bool `json:"compensation,omitempty"`
}

// InstanceStatus is how one instance took a step.
type InstanceStatus string

// The outcomes of an instance in a step.
const (
	// InstanceAnswered is an ok answer.
	InstanceAnswered InstanceStatus = "answered"
	// InstanceFailed is an ok:false answer; the InstanceOutcome's Error
	// says why.
	InstanceFailed InstanceStatus = "failed"
	// InstanceMissing is no answer within the step's timeout from an
	// instance that $SRV.PING or membership expected.
	InstanceMissing InstanceStatus = "missing"
)

// InstanceOutcome is one instance's part in a step.
type InstanceOutcome struct {
	Instance string         `json:"instance"`
	Outcome  InstanceStatus `json:"outcome"`
	// Error is the failed instance's error, or for a missing one the
	// timeout it missed (code timeout).
	Error *Error `json:"error,omitempty"`
}

// Rollback is the result object of a reload-settings or switch-mode that
// failed (ARCHITECTURE.md §6, all or nothing): control restored the
// previous desired state and re-applied it, in compensation steps, on the
// instances that had confirmed the new one.
type Rollback struct {
	// RolledBack is true when every instance that had confirmed Attempted
	// confirmed Revision again; false when the rollback could not complete
	// (Instances then says who is on which revision).
	RolledBack bool `json:"rolled_back"`
	// Revision is the desired-state revision restored (the previous one),
	// Attempted the one that failed.
	Revision  int64 `json:"revision"`
	Attempted int64 `json:"attempted_revision"`
	// Restored is true when VIGIL_STATE holds the previous state again, so
	// stragglers converge to it.
	Restored bool `json:"restored"`
	// Instances is each instance that took part in an apply step of the
	// command or of its compensation, with the revision it last
	// confirmed; instances not listed never left Revision.
	Instances []InstanceRevision `json:"instances"`
	// Reason says why the rollback did not complete (empty when it did).
	Reason string `json:"reason,omitempty"`
}

// InstanceRevision is the configuration revision an instance of a
// service is on for a user, as far as its answers say.
type InstanceRevision struct {
	Service  string `json:"service"`
	Instance string `json:"instance"`
	// Revision is the revision the instance last confirmed (an instance
	// that refused the new one kept the previous one); 0 when it answered
	// neither and no status probe told (it converges to the desired
	// state from VIGIL_STATE).
	Revision int64 `json:"revision"`
	// Probed is true when Revision is what the instance's status said,
	// asked after the rollback because it answered no apply; Unreachable
	// is true when it did not answer that probe either.
	Probed      bool `json:"probed,omitempty"`
	Unreachable bool `json:"unreachable,omitempty"`
}

// Result is the final result of a command on vigil.result.<user>.<id>.
type Result struct {
	ID         string          `json:"id"`
	User       string          `json:"user"`
	Command    Command         `json:"command"`
	Status     Status          `json:"status"`
	Result     json.RawMessage `json:"result,omitempty"`
	Error      *Error          `json:"error,omitempty"`
	Steps      []Step          `json:"steps"`
	AcceptedAt time.Time       `json:"accepted_at"`
	FinishedAt time.Time       `json:"finished_at"`
	TraceID    string          `json:"trace_id,omitempty"`
}

// Progress is one progress event on vigil.progress.<user>.<id>.
type Progress struct {
	ID      string `json:"id"`
	Done    int    `json:"done"`
	Total   int    `json:"total"`
	Unit    string `json:"unit"`
	Message string `json:"message"`
}

// Candle is one versioned candle of a series, as stored in Redis and
// published on vigil.candle.<user>.<exchange>.<symbol>.<tf>.
type Candle struct {
	SeriesID
	// Start is the bar's UTC start in UNIX seconds.
	Start  int64   `json:"start"`
	Open   float64 `json:"open"`
	High   float64 `json:"high"`
	Low    float64 `json:"low"`
	Close  float64 `json:"close"`
	Volume float64 `json:"volume"`
	// Closed is true once the bar's time is over.
	Closed bool `json:"closed"`
	// Version orders writes of the same bar: a write replaces the stored
	// candle only when its version is higher. Sources use the observation
	// time in UNIX microseconds (exact in Redis Lua's doubles).
	Version int64 `json:"version"`
	// Source names where the candle came from (sim, replay, ws, rest).
	Source string `json:"source,omitempty"`
}

// Validate checks the series id, alignment and prices of a candle.
func (c Candle) Validate() error {
	var f fieldErrs
	f.check("series", c.SeriesID.Validate())
	if d := int64(c.Timeframe.Duration() / time.Second); d > 0 && c.Start%d != 0 {
		f.add("start", "%d is not aligned to %s", c.Start, c.Timeframe)
	}
	if c.Start <= 0 {
		f.add("start", "must be a positive UNIX time")
	}
	for _, p := range []struct {
		name string
		v    float64
	}{{"open", c.Open}, {"high", c.High}, {"low", c.Low}, {"close", c.Close}, {"volume", c.Volume}} {
		if math.IsNaN(p.v) || math.IsInf(p.v, 0) || p.v < 0 {
			f.add(p.name, "must be a finite non-negative number, got %v", p.v)
		}
	}
	if c.Low > c.High {
		f.add("low", "%v is above high %v", c.Low, c.High)
	}
	if c.Version <= 0 {
		f.add("version", "must be positive")
	}
	return f.err()
}

// StartTime is the bar's start as a UTC time.
func (c Candle) StartTime() time.Time { return time.Unix(c.Start, 0).UTC() }

// MsgID is the Nats-Msg-Id of this candle version, so a redelivered publish
// is dropped by the stream.
func (c Candle) MsgID() string {
	return fmt.Sprintf("%d:%d:%s:%s:%d:%d", c.UserID, c.ExchangeID, c.Symbol, c.Timeframe, c.Start, c.Version)
}

// Fields are the named outputs of one indicator at one bar, e.g. {"value":
// 61.2} for RSI or {"macd":..,"signal":..,"hist":..} for MACD.
type Fields map[string]float64

// IndicatorUpdate is published on vigil.indicator.<user>.<exchange>.<symbol>.<tf>
// after each candle update: every warm indicator's values at that bar.
type IndicatorUpdate struct {
	SeriesID
	Start   int64   `json:"start"`
	Closed  bool    `json:"closed"`
	Version int64   `json:"version"`
	Close   float64 `json:"close"`
	// Values holds the warm indicators by name; warming ones are listed in
	// Warming and have no value (never NaN).
	Values     map[string]Fields `json:"values"`
	Warming    []string          `json:"warming,omitempty"`
	ComputedAt time.Time         `json:"computed_at"`
}

// Alert is one fired alert on vigil.alert.<user>.<ruleId> and in
// alert_events. ID is deterministic (rule and bar), so redelivery and
// failover never make a second alert for the same event.
type Alert struct {
	ID         string    `json:"id"`
	User       string    `json:"user"`
	UserID     int64     `json:"user_id"`
	ExchangeID int64     `json:"exchange_id"`
	RuleID     string    `json:"rule_id"`
	Kind       RuleKind  `json:"kind"`
	Symbol     string    `json:"symbol"`
	Timeframe  Timeframe `json:"tf"`
	BarStart   int64     `json:"bar_start"`
	Message    string    `json:"message"`
	Value      float64   `json:"value"`
	FiredAt    time.Time `json:"fired_at"`
}

// AlertID is the deterministic id of a rule firing on a bar.
func AlertID(user, ruleID string, barStart int64) string {
	return fmt.Sprintf("%s.%s.%d", user, ruleID, barStart)
}

// DesiredState is a user's desired state in KV VIGIL_STATE (key user.<token>).
// Control writes it before running a sequence; every instance converges to it.
type DesiredState struct {
	User       string   `json:"user"`
	UserID     int64    `json:"user_id"`
	ExchangeID int64    `json:"exchange_id"`
	Paused     bool     `json:"paused"`
	Mode       Mode     `json:"mode"`
	Symbols    []string `json:"symbols"`
	// Revision increases with every settings change.
	Revision  int64     `json:"revision"`
	Settings  Settings  `json:"settings"`
	CommandID string    `json:"command_id,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// ActiveMode is the mode the state runs: Mode, or the settings' mode when
// the state names none.
func (s DesiredState) ActiveMode() Mode {
	if s.Mode == "" {
		return s.Settings.Mode
	}
	return s.Mode
}

// ActiveRules are the rules of the state's active mode.
func (s DesiredState) ActiveRules() []Rule { return s.Settings.Rules[s.ActiveMode()] }

// Validate checks a desired state as the services use it: the user token,
// positive user and exchange ids, the mode and the settings' mode when
// given, and every symbol. The settings as a whole were validated by control
// (Settings.Validate) before they were written. All problems are reported
// together, named as in the JSON ("user_id", "symbols[2]").
func (s DesiredState) Validate() error {
	var f fieldErrs
	f.check("user", ValidateUserToken(s.User))
	f.check("user_id", ValidateID("user_id", s.UserID))
	f.check("exchange_id", ValidateID("exchange_id", s.ExchangeID))
	if s.Mode != "" {
		f.check("mode", s.Mode.Validate())
	}
	if s.Settings.Mode != "" {
		f.check("settings.mode", s.Settings.Mode.Validate())
	}
	for i, sym := range s.Symbols {
		f.check(fmt.Sprintf("symbols[%d]", i), ValidateSymbol(sym))
	}
	return f.err()
}

// ValidateFor checks s as Validate does and that it is user's desired
// state (the user token of its key or request).
func (s DesiredState) ValidateFor(user string) error {
	if s.User != user {
		return FieldError{Field: "state.user", Problem: fmt.Sprintf("%q is not the user %q", s.User, user)}
	}
	if err := s.Validate(); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}

// WatchedSymbols is the user's symbols: the state's, or the settings' when
// the state has none.
func (s DesiredState) WatchedSymbols() []string {
	if s.Symbols != nil {
		return s.Symbols
	}
	return s.Settings.Symbols
}

// SvcRequest is the body of a vigil.svc.<service>.<verb> request.
type SvcRequest struct {
	CommandID string `json:"command_id"`
	User      string `json:"user"`
	// State is the user's desired state as written to VIGIL_STATE before the step.
	State *DesiredState `json:"state,omitempty"`
	// Args holds verb-specific arguments (backfill, recompute, forget).
	Args json.RawMessage `json:"args,omitempty"`
}

// SvcReply is each instance's answer to a vigil.svc request.
type SvcReply struct {
	Service  string          `json:"service"`
	Instance string          `json:"instance"`
	OK       bool            `json:"ok"`
	Error    *Error          `json:"error,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
}

// BackfillArgs are the args of vigil.svc.feed.backfill.
type BackfillArgs struct {
	UserID     int64       `json:"user_id"`
	ExchangeID int64       `json:"exchange_id"`
	Symbol     string      `json:"symbol"`
	Timeframes []Timeframe `json:"timeframes"`
	From       time.Time   `json:"from"`
	To         time.Time   `json:"to"`
	// ProgressSubject is where the job publishes Progress events.
	ProgressSubject string `json:"progress_subject"`
}

// CancelArgs are the args of vigil.svc.feed.cancel: the command whose
// backfill job stops between pages.
type CancelArgs struct {
	CommandID string `json:"command_id"`
}

// JobProgress is how far a stopped backfill job got: pages fetched and
// written of the planned total, and candles written per timeframe. The
// feed's cancel verb answers it per stopped job.
type JobProgress struct {
	Pages   int               `json:"pages"`
	Total   int               `json:"total"`
	Candles map[Timeframe]int `json:"candles"`
}

// RecomputeArgs are the args of vigil.svc.indicators.recompute.
type RecomputeArgs struct {
	Series SeriesID `json:"series"`
}

// ForgetArgs are the args of vigil.svc.indicators.forget.
type ForgetArgs struct {
	UserID     int64      `json:"user_id"`
	ExchangeID int64      `json:"exchange_id"`
	Scope      ClearScope `json:"scope"`
	Symbol     string     `json:"symbol,omitempty"`
	Timeframe  Timeframe  `json:"timeframe,omitempty"`
}

// Selector is the cache selector of these args.
func (a ForgetArgs) Selector() CacheSelector {
	return CacheSelector(a)
}

// Limits are the configurable bounds of ARCHITECTURE.md §9.
type Limits struct {
	MaxSymbols int
	MaxRules   int
}

// DefaultLimits are used when nothing else is configured.
var DefaultLimits = Limits{MaxSymbols: 50, MaxRules: 200}

// WebhookStatus is one user's webhook delivery as the vigil-alerts
// instance delivering it reports it in its status verb ("webhooks", by
// user) and vigilctl shows it.
type WebhookStatus struct {
	// Host is the receiver's host (never the URL, which may hold a token).
	Host string `json:"host"`
	// Pending is how many alerts wait for delivery, the one in hand
	// included; -1 when the server could not be asked.
	Pending int64 `json:"pending"`
	// Delivered and GivenUp count the instance's deliveries since it
	// took the user.
	Delivered int64 `json:"delivered"`
	GivenUp   int64 `json:"given_up"`
	// Failing is true while the alert in hand has failed at least once;
	// FailingSince is when its first attempt failed, Attempts how many
	// were made, LastError the last failure.
	Failing       bool      `json:"failing"`
	FailingSince  time.Time `json:"failing_since,omitzero"`
	Attempts      int       `json:"attempts,omitempty"`
	LastError     string    `json:"last_error,omitempty"`
	LastDelivered time.Time `json:"last_delivered,omitzero"`
}
