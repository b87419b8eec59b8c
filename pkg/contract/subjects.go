package contract

import (
	"fmt"
	"strconv"
	"strings"
)

// Stream, bucket and service names of the contract.
const (
	StreamResults = "VIGIL_RESULTS"
	StreamCandles = "VIGIL_CANDLES"
	StreamAlerts  = "VIGIL_ALERTS"
	// StreamIndicators carries vigil.indicator.> (our choice of the
	// contract's "core or JetStream"; see docs/design.md).
	StreamIndicators = "VIGIL_INDICATORS"
	BucketState      = "VIGIL_STATE"

	ServiceFeed       = "vigil-feed"
	ServiceIndicators = "vigil-indicators"
	ServiceAlerts     = "vigil-alerts"
	ServiceControl    = "vigil-control"
)

// Svc is the short name of a service in vigil.svc.<service>.<verb>.
type Svc string

// The services that control drives.
const (
	SvcFeed       Svc = "feed"
	SvcIndicators Svc = "indicators"
	SvcAlerts     Svc = "alerts"
)

// SvcControl is control itself, which answers only the status verb
// (vigil.svc.control.status) on this scheme.
const SvcControl Svc = "control"

// MicroName is the NATS micro service name of s (vigil-feed, ...).
func (s Svc) MicroName() string { return "vigil-" + string(s) }

// Verb is a control verb a service answers on vigil.svc.<service>.<verb>.
type Verb string

// The verbs of ARCHITECTURE.md §4.
const (
	VerbPause     Verb = "pause"
	VerbResume    Verb = "resume"
	VerbApply     Verb = "apply"
	VerbBackfill  Verb = "backfill"
	VerbRecompute Verb = "recompute"
	VerbForget    Verb = "forget"
	VerbStatus    Verb = "status"
	// VerbCancel stops one running backfill job of the user (the feed's):
	// it answers once the job stopped, with how far it got.
	VerbCancel Verb = "cancel"
	// VerbPlan asks what another verb would do, changing nothing
	// (PlanArgs); the dry runs of ARCHITECTURE.md §5 use it.
	VerbPlan Verb = "plan"
)

// Subject prefixes and wildcards, for stream configs and subscriptions.
const (
	CommandSubjects   = "vigil.cmd.*.*"
	ResultSubjects    = "vigil.result.>"
	ProgressSubjects  = "vigil.progress.>"
	CandleSubjects    = "vigil.candle.>"
	IndicatorSubjects = "vigil.indicator.>"
	BookSubjects      = "vigil.book.>"
	AlertSubjects     = "vigil.alert.>"
	// AlertIngestSubjects is where vigil-alerts publishes alerts: only the
	// stream VIGIL_ALERTS listens there, stores each alert id once as
	// vigil.alert.<user>.<ruleId> and republishes what it stored on that
	// subject for core subscribers.
	AlertIngestSubjects = "vigil.alertin.>"
)

// CommandSubject is vigil.cmd.<user>.<command>.
func CommandSubject(user string, cmd Command) string {
	return "vigil.cmd." + user + "." + string(cmd)
}

// ParseCommandSubject splits vigil.cmd.<user>.<command> and validates both
// parts. An unknown command wraps ErrUnknownCommand.
func ParseCommandSubject(subject string) (user string, cmd Command, err error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 || parts[0] != "vigil" || parts[1] != "cmd" {
		return "", "", FieldError{Field: "subject", Problem: fmt.Sprintf("%q is not vigil.cmd.<user>.<command>", subject)}
	}
	if err := ValidateUserToken(parts[2]); err != nil {
		return "", "", err
	}
	cmd, err = ParseCommand(parts[3])
	if err != nil {
		return "", "", err
	}
	return parts[2], cmd, nil
}

// ResultSubject is vigil.result.<user>.<id>.
func ResultSubject(user, id string) string { return "vigil.result." + user + "." + id }

// ProgressSubject is vigil.progress.<user>.<id>.
func ProgressSubject(user, id string) string { return "vigil.progress." + user + "." + id }

// SvcSubject is vigil.svc.<service>.<verb>.
func SvcSubject(s Svc, v Verb) string { return "vigil.svc." + string(s) + "." + string(v) }

// SeriesID names one candle series: (user, exchange account, symbol,
// timeframe). UserID is users.id, used in Redis keys; User is the token used
// in subjects.
type SeriesID struct {
	User       string    `json:"user"`
	UserID     int64     `json:"user_id"`
	ExchangeID int64     `json:"exchange_id"`
	Symbol     string    `json:"symbol"`
	Timeframe  Timeframe `json:"tf"`
}

// Validate checks every part of the series id.
func (s SeriesID) Validate() error {
	var f fieldErrs
	f.check("user", ValidateUserToken(s.User))
	f.check("user_id", ValidateID("user_id", s.UserID))
	f.check("exchange_id", ValidateID("exchange_id", s.ExchangeID))
	f.check("symbol", ValidateSymbol(s.Symbol))
	f.check("tf", s.Timeframe.Validate())
	return f.err()
}

// String is a readable form used in logs: user/exchange/symbol/tf.
func (s SeriesID) String() string {
	return s.User + "/" + strconv.FormatInt(s.ExchangeID, 10) + "/" + s.Symbol + "/" + string(s.Timeframe)
}

// CandleSubject is vigil.candle.<user>.<exchange>.<symbol>.<tf>.
func CandleSubject(s SeriesID) string {
	return "vigil.candle." + s.User + "." + strconv.FormatInt(s.ExchangeID, 10) + "." + s.Symbol + "." + string(s.Timeframe)
}

// IndicatorSubject is vigil.indicator.<user>.<exchange>.<symbol>.<tf>.
func IndicatorSubject(s SeriesID) string {
	return "vigil.indicator." + s.User + "." + strconv.FormatInt(s.ExchangeID, 10) + "." + s.Symbol + "." + string(s.Timeframe)
}

// BookSubject is vigil.book.<user>.<exchange>.<symbol>: order-book summaries
// from the feed for the scalper-orderbook mode (core NATS).
func BookSubject(user string, exchangeID int64, symbol string) string {
	return "vigil.book." + user + "." + strconv.FormatInt(exchangeID, 10) + "." + symbol
}

// ParseSeriesSubject splits vigil.candle|indicator.<user>.<exchange>.<symbol>.<tf>
// into its series id (UserID is left zero: subjects carry the token only).
func ParseSeriesSubject(subject string) (kind string, s SeriesID, err error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 6 || parts[0] != "vigil" || (parts[1] != "candle" && parts[1] != "indicator") {
		return "", s, FieldError{Field: "subject", Problem: fmt.Sprintf("%q is not vigil.candle|indicator.<user>.<exchange>.<symbol>.<tf>", subject)}
	}
	ex, perr := strconv.ParseInt(parts[3], 10, 64)
	if perr != nil || ex <= 0 {
		return "", s, FieldError{Field: "exchange_id", Problem: fmt.Sprintf("%q is not a positive id", parts[3])}
	}
	s = SeriesID{User: parts[2], ExchangeID: ex, Symbol: parts[4], Timeframe: Timeframe(parts[5])}
	var f fieldErrs
	f.check("user", ValidateUserToken(s.User))
	f.check("symbol", ValidateSymbol(s.Symbol))
	f.check("tf", s.Timeframe.Validate())
	if err := f.err(); err != nil {
		return "", SeriesID{}, err
	}
	return parts[1], s, nil
}

// AlertSubject is vigil.alert.<user>.<ruleId>.
func AlertSubject(user, ruleID string) string { return "vigil.alert." + user + "." + ruleID }

// AlertIngestSubject is vigil.alertin.<user>.<ruleId>, where vigil-alerts
// publishes the alert that VIGIL_ALERTS stores as AlertSubject(user, ruleID).
func AlertIngestSubject(user, ruleID string) string {
	return "vigil.alertin." + user + "." + ruleID
}

// StateKey is the key of a user's desired state in KV VIGIL_STATE.
func StateKey(user string) string { return "user." + user }

// UserFromStateKey returns the user token of a VIGIL_STATE key.
func UserFromStateKey(key string) (string, error) {
	user, ok := strings.CutPrefix(key, "user.")
	if !ok {
		return "", FieldError{Field: "key", Problem: fmt.Sprintf("%q is not user.<token>", key)}
	}
	return user, ValidateUserToken(user)
}
