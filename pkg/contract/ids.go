package contract

import (
	"fmt"
	"regexp"
	"time"
)

// Limits on identifiers.
const (
	// MaxUserTokenLen is the longest user token.
	MaxUserTokenLen = 64
	// MaxSymbolLen is the longest product id accepted.
	MaxSymbolLen = 64
)

var (
	userTokenRE     = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	symbolRE        = regexp.MustCompile(`^[A-Z0-9]{1,20}(-[A-Z0-9]{1,20}){1,3}$`)
	ruleIDRE        = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	indicatorNameRE = regexp.MustCompile(`^[a-z0-9_]{1,40}$`)
	commandIDRE     = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

// ValidateUserToken checks a user token (a user's identity_sub as it appears
// in subjects): 1–64 characters of A-Z a-z 0-9 _ -. Wildcards, dots,
// spaces and non-ASCII lookalikes are rejected.
func ValidateUserToken(token string) error {
	if token == "" {
		return FieldError{Field: "user", Problem: "is required"}
	}
	if len(token) > MaxUserTokenLen {
		return FieldError{Field: "user", Problem: fmt.Sprintf("is %d bytes long, the limit is %d", len(token), MaxUserTokenLen)}
	}
	if !userTokenRE.MatchString(token) {
		return FieldError{Field: "user", Problem: fmt.Sprintf("%q may contain only A-Z a-z 0-9 _ -", token)}
	}
	return nil
}

// ValidateSymbol checks a product id such as BTC-USD or BTC-PERP-INTX:
// uppercase letters and digits in 2–4 parts joined by '-'. Glob and subject
// wildcards, ':' and everything else are rejected, so a symbol can never
// widen a Redis pattern or a NATS subject.
func ValidateSymbol(symbol string) error {
	if symbol == "" {
		return FieldError{Field: "symbol", Problem: "is required"}
	}
	if len(symbol) > MaxSymbolLen {
		return FieldError{Field: "symbol", Problem: fmt.Sprintf("is %d bytes long, the limit is %d", len(symbol), MaxSymbolLen)}
	}
	if !symbolRE.MatchString(symbol) {
		return FieldError{Field: "symbol", Problem: fmt.Sprintf("%q is not a product id like BTC-USD (uppercase A-Z 0-9 parts joined by '-')", symbol)}
	}
	return nil
}

// ValidateRuleID checks an alert rule id: 1–64 characters of A-Z a-z 0-9 _ -.
func ValidateRuleID(id string) error {
	if !ruleIDRE.MatchString(id) {
		return FieldError{Field: "id", Problem: fmt.Sprintf("%q must be 1-64 characters of A-Z a-z 0-9 _ -", id)}
	}
	return nil
}

// ValidateCommandID checks a client-chosen command id (Nats-Msg-Id or the
// payload's "id"): 1–64 characters of A-Z a-z 0-9 _ -.
func ValidateCommandID(id string) error {
	if !commandIDRE.MatchString(id) {
		return FieldError{Field: "id", Problem: fmt.Sprintf("%q must be 1-64 characters of A-Z a-z 0-9 _ -", id)}
	}
	return nil
}

// ValidateIndicatorName checks an indicator series name as used in keys and
// subjects, such as ema_20 or macd_12_26_9.
func ValidateIndicatorName(name string) error {
	if !indicatorNameRE.MatchString(name) {
		return FieldError{Field: "indicator", Problem: fmt.Sprintf("%q must be 1-40 characters of a-z 0-9 _", name)}
	}
	return nil
}

// ValidateID checks a database id used in keys and subjects (users.id,
// exchange_accounts.id): it must be positive.
func ValidateID(field string, id int64) error {
	if id <= 0 {
		return FieldError{Field: field, Problem: fmt.Sprintf("must be a positive id, got %d", id)}
	}
	return nil
}

// Timeframe is a candle timeframe, exactly one of 1m 5m 15m 1h 4h 1d.
type Timeframe string

// The timeframes of the contract, shortest first.
const (
	TF1m  Timeframe = "1m"
	TF5m  Timeframe = "5m"
	TF15m Timeframe = "15m"
	TF1h  Timeframe = "1h"
	TF4h  Timeframe = "4h"
	TF1d  Timeframe = "1d"
)

// Timeframes lists every timeframe, shortest first.
var Timeframes = []Timeframe{TF1m, TF5m, TF15m, TF1h, TF4h, TF1d}

var timeframeDurations = map[Timeframe]time.Duration{
	TF1m: time.Minute, TF5m: 5 * time.Minute, TF15m: 15 * time.Minute,
	TF1h: time.Hour, TF4h: 4 * time.Hour, TF1d: 24 * time.Hour,
}

// ParseTimeframe validates s as a timeframe.
func ParseTimeframe(s string) (Timeframe, error) {
	tf := Timeframe(s)
	if _, ok := timeframeDurations[tf]; !ok {
		return "", FieldError{Field: "timeframe", Problem: fmt.Sprintf("%q is not one of 1m 5m 15m 1h 4h 1d", s)}
	}
	return tf, nil
}

// Validate checks that tf is one of the contract's timeframes.
func (tf Timeframe) Validate() error {
	_, err := ParseTimeframe(string(tf))
	return err
}

// Duration is the length of one bar of tf; zero for an invalid timeframe.
func (tf Timeframe) Duration() time.Duration { return timeframeDurations[tf] }

// BarStart is the UTC-aligned start of the bar of tf that contains t.
func (tf Timeframe) BarStart(t time.Time) time.Time {
	return t.UTC().Truncate(tf.Duration())
}
