package contract

import (
	"bytes"
	"fmt"
	"slices"
	"time"
)

// MaxPayloadBytes is the largest command payload accepted (64 KiB).
const MaxPayloadBytes = 64 << 10

// Command is an operator command name as it appears in vigil.cmd.<user>.<command>.
type Command string

// The commands of ARCHITECTURE.md §5.
const (
	CmdPause          Command = "pause"
	CmdResume         Command = "resume"
	CmdReloadSettings Command = "reload-settings"
	CmdSwitchMode     Command = "switch-mode"
	CmdForceBackfill  Command = "force-backfill"
	CmdClearCache     Command = "clear-cache"
	CmdCancel         Command = "cancel"
)

// Commands lists every command.
var Commands = []Command{CmdPause, CmdResume, CmdReloadSettings, CmdSwitchMode, CmdForceBackfill, CmdClearCache, CmdCancel}

// ParseCommand validates a command name; an unknown one wraps
// ErrUnknownCommand.
func ParseCommand(s string) (Command, error) {
	for _, c := range Commands {
		if string(c) == s {
			return c, nil
		}
	}
	return "", fmt.Errorf("command %q is not one of pause, resume, reload-settings, switch-mode, force-backfill, clear-cache, cancel: %w", s, ErrUnknownCommand)
}

// Priority orders a user's queued commands: higher runs first (cancel,
// pause, resume > switch-mode, reload-settings > clear-cache >
// force-backfill).
func (c Command) Priority() int {
	switch c {
	case CmdCancel, CmdPause, CmdResume:
		return 3
	case CmdSwitchMode, CmdReloadSettings:
		return 2
	case CmdClearCache:
		return 1
	}
	return 0
}

// MaxBackfillBars bounds force-backfill's from..to per timeframe, as a number
// of bars (the configured retention is the useful upper bound).
const MaxBackfillBars = 100_000

// PausePayload is pause's payload: nothing but an optional id.
type PausePayload struct {
	ID string `json:"id,omitempty"`
}

// ResumePayload is resume's payload: optionally the symbols to watch from now
// on (they become the stored symbols).
type ResumePayload struct {
	ID      string   `json:"id,omitempty"`
	Symbols []string `json:"symbols,omitempty"`
}

// ReloadSettingsPayload is reload-settings' payload: nothing but an optional id.
type ReloadSettingsPayload struct {
	ID string `json:"id,omitempty"`
	Planning
}

// SwitchModePayload is switch-mode's payload.
type SwitchModePayload struct {
	ID   string `json:"id,omitempty"`
	Mode Mode   `json:"mode"`
	Planning
}

// ForceBackfillPayload is force-backfill's payload. Timeframes default to all
// six; From defaults to the retention window before To; To defaults to now.
type ForceBackfillPayload struct {
	ID         string      `json:"id,omitempty"`
	Symbol     string      `json:"symbol"`
	Timeframes []Timeframe `json:"timeframes,omitempty"`
	// From and To are RFC 3339 times.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	Planning
}

// Range is the payload's from and to as times; zero when not given. Call it
// on a validated payload.
func (p ForceBackfillPayload) Range() (from, to time.Time) {
	from, _ = parseOptionalTime(p.From)
	to, _ = parseOptionalTime(p.To)
	return from, to
}

func parseOptionalTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time like 2026-11-01T00:00:00Z", s)
	}
	if t.Before(time.Unix(0, 0)) {
		// The zero time would read as "not given" and skip the range checks.
		return time.Time{}, fmt.Errorf("%q is before 1970-01-01T00:00:00Z", s)
	}
	return t.UTC(), nil
}

// ClearCachePayload is clear-cache's payload. Exchange defaults to the user's
// default exchange account.
type ClearCachePayload struct {
	ID        string     `json:"id,omitempty"`
	Scope     ClearScope `json:"scope"`
	Symbol    string     `json:"symbol,omitempty"`
	Timeframe Timeframe  `json:"timeframe,omitempty"`
	Exchange  int64      `json:"exchange,omitempty"`
	Planning
}

// CancelPayload is cancel's payload: the id of the user's command to
// cancel. Unlike the other payloads its id is not the command's own id
// (that comes only from the Nats-Msg-Id header, or is made up).
type CancelPayload struct {
	ID string `json:"id"`
}

// Payload is a decoded, validated command payload.
type Payload interface {
	// CommandID is the client-chosen id in the payload, or "".
	CommandID() string
	// Validate checks the payload against the contract and the limits.
	Validate(l Limits) error
}

// CommandID implements Payload.
func (p PausePayload) CommandID() string { return p.ID }

// CommandID implements Payload.
func (p ResumePayload) CommandID() string { return p.ID }

// CommandID implements Payload.
func (p ReloadSettingsPayload) CommandID() string { return p.ID }

// CommandID implements Payload.
func (p SwitchModePayload) CommandID() string { return p.ID }

// CommandID implements Payload.
func (p ForceBackfillPayload) CommandID() string { return p.ID }

// CommandID implements Payload.
func (p ClearCachePayload) CommandID() string { return p.ID }

// CommandID implements Payload: a cancel's own id never comes from its
// payload, whose id names the command to cancel.
func (p CancelPayload) CommandID() string { return "" }

func validateOptionalID(f *fieldErrs, id string) {
	if id != "" {
		f.check("id", ValidateCommandID(id))
	}
}

// Validate implements Payload.
func (p PausePayload) Validate(Limits) error {
	var f fieldErrs
	validateOptionalID(&f, p.ID)
	return f.err()
}

// Validate implements Payload.
func (p ReloadSettingsPayload) Validate(Limits) error {
	var f fieldErrs
	validateOptionalID(&f, p.ID)
	p.validate(&f)
	return f.err()
}

// Validate implements Payload.
func (p ResumePayload) Validate(l Limits) error {
	var f fieldErrs
	validateOptionalID(&f, p.ID)
	if p.Symbols != nil {
		validateSymbolList(&f, "symbols", p.Symbols, l.MaxSymbols)
	}
	return f.err()
}

// Validate implements Payload.
func (p SwitchModePayload) Validate(Limits) error {
	var f fieldErrs
	validateOptionalID(&f, p.ID)
	if p.Mode == "" {
		f.add("mode", "is required (position-monitor, scalper-macdv or scalper-orderbook)")
	} else {
		f.check("mode", p.Mode.Validate())
	}
	p.validate(&f)
	return f.err()
}

// Validate implements Payload.
func (p ForceBackfillPayload) Validate(Limits) error {
	var f fieldErrs
	validateOptionalID(&f, p.ID)
	f.check("symbol", ValidateSymbol(p.Symbol))
	seen := map[Timeframe]bool{}
	for i, tf := range p.Timeframes {
		field := fmt.Sprintf("timeframes[%d]", i)
		if err := tf.Validate(); err != nil {
			f.check(field, err)
		} else if seen[tf] {
			f.add(field, "%q is listed twice", tf)
		}
		seen[tf] = true
	}
	from, err := parseOptionalTime(p.From)
	f.check("from", err)
	to, err := parseOptionalTime(p.To)
	f.check("to", err)
	if !from.IsZero() && !to.IsZero() && !from.Before(to) {
		f.add("from", "must be before to")
	}
	if to.After(time.Now().Add(time.Minute)) {
		f.add("to", "is in the future")
	}
	if !from.IsZero() && !to.IsZero() {
		for _, tf := range p.BackfillTimeframes() {
			if tf.Duration() == 0 {
				continue
			}
			if bars := to.Sub(from) / tf.Duration(); bars > MaxBackfillBars {
				f.add("from", "range is %d bars of %s, the limit is %d", bars, tf, MaxBackfillBars)
				break
			}
		}
	}
	p.validate(&f)
	return f.err()
}

// CheckWatched reports a force-backfill of a symbol that is not among
// watched, the user's symbols (DesiredState.WatchedSymbols): a backfill
// writes into the user's keys, so only a symbol the user watches may be
// filled.
func (p ForceBackfillPayload) CheckWatched(watched []string) error {
	if slices.Contains(watched, p.Symbol) {
		return nil
	}
	return FieldError{Field: "symbol", Problem: fmt.Sprintf("%q is not one of the user's symbols %v", p.Symbol, watched)}
}

// BackfillTimeframes is the payload's timeframes, or all six when none are
// given.
func (p ForceBackfillPayload) BackfillTimeframes() []Timeframe {
	if len(p.Timeframes) == 0 {
		return Timeframes
	}
	return p.Timeframes
}

// Validate implements Payload.
func (p CancelPayload) Validate(Limits) error {
	var f fieldErrs
	if p.ID == "" {
		f.add("id", "is required: the id of the command to cancel")
	} else {
		f.check("id", ValidateCommandID(p.ID))
	}
	return f.err()
}

// Validate implements Payload.
func (p ClearCachePayload) Validate(Limits) error {
	var f fieldErrs
	validateOptionalID(&f, p.ID)
	if p.Exchange < 0 {
		f.add("exchange", "must be a positive exchange account id")
	}
	switch p.Scope {
	case ScopeAll:
		if p.Symbol != "" || p.Timeframe != "" {
			f.add("scope", "all takes no symbol or timeframe")
		}
	case ScopeSymbol:
		f.check("symbol", ValidateSymbol(p.Symbol))
		if p.Timeframe != "" {
			f.add("timeframe", "is only allowed with scope timeframe")
		}
	case ScopeTimeframe:
		f.check("symbol", ValidateSymbol(p.Symbol))
		f.check("timeframe", p.Timeframe.Validate())
	case "":
		f.add("scope", "is required (all, symbol or timeframe)")
	default:
		f.add("scope", "%q is not one of all, symbol, timeframe", p.Scope)
	}
	p.validate(&f)
	return f.err()
}

func validateSymbolList(f *fieldErrs, field string, symbols []string, max int) {
	if max > 0 && len(symbols) > max {
		f.add(field, "has %d symbols, the limit is %d", len(symbols), max)
	}
	seen := map[string]bool{}
	for i, s := range symbols {
		name := fmt.Sprintf("%s[%d]", field, i)
		if err := ValidateSymbol(s); err != nil {
			f.check(name, err)
			continue
		}
		if seen[s] {
			f.add(name, "%q is listed twice", s)
		}
		seen[s] = true
	}
}

// DecodePayload decodes and validates the payload of cmd as an operator
// sent it. An empty body is {}. Unknown fields, trailing data, more than
// MaxPayloadBytes and invalid values are errors that name the field.
func DecodePayload(cmd Command, body []byte, l Limits) (Payload, error) {
	return decodePayload(cmd, body, l, true)
}

// DecodeRecordedPayload decodes and validates the payload of cmd as a
// vigil-control instance recorded it in the command queue after
// DecodePayload accepted it: unknown fields are ignored (DecodePeer), so
// an instance of the previous version runs a command that a newer
// instance accepted with a field it does not know yet. Values are
// validated as DecodePayload validates them.
func DecodeRecordedPayload(cmd Command, body []byte, l Limits) (Payload, error) {
	return decodePayload(cmd, body, l, false)
}

// decodePayload is DecodePayload (strict) or DecodeRecordedPayload.
func decodePayload(cmd Command, body []byte, l Limits, strict bool) (Payload, error) {
	if len(body) > MaxPayloadBytes {
		return nil, FieldError{Field: "payload", Problem: fmt.Sprintf("is %d bytes, the limit is %d", len(body), MaxPayloadBytes)}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	var p Payload
	var err error
	switch cmd {
	case CmdPause:
		p, err = decodeAs[PausePayload](body, strict)
	case CmdResume:
		p, err = decodeAs[ResumePayload](body, strict)
	case CmdReloadSettings:
		p, err = decodeAs[ReloadSettingsPayload](body, strict)
	case CmdSwitchMode:
		p, err = decodeAs[SwitchModePayload](body, strict)
	case CmdForceBackfill:
		p, err = decodeAs[ForceBackfillPayload](body, strict)
	case CmdClearCache:
		p, err = decodeAs[ClearCachePayload](body, strict)
	case CmdCancel:
		p, err = decodeAs[CancelPayload](body, strict)
	default:
		return nil, fmt.Errorf("command %q: %w", cmd, ErrUnknownCommand)
	}
	if err != nil {
		return nil, err
	}
	return p, p.Validate(l)
}

// decodeAs is DecodeStrict or DecodePeer.
func decodeAs[T any](body []byte, strict bool) (T, error) {
	if strict {
		return DecodeStrict[T](body)
	}
	return DecodePeer[T](body)
}
