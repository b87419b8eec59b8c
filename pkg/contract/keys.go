package contract

import (
	"fmt"
	"strconv"
)

// CandleKey is the Redis key of one candle series:
// candles:{userId}:{exchangeId}:{symbol}:{tf}.
func CandleKey(s SeriesID) string {
	return "candles:" + strconv.FormatInt(s.UserID, 10) + ":" + strconv.FormatInt(s.ExchangeID, 10) + ":" + s.Symbol + ":" + string(s.Timeframe)
}

// IndicatorKey is the Redis key of one indicator series:
// indicator:{userId}:{exchangeId}:{symbol}:{tf}:{name}.
func IndicatorKey(s SeriesID, name string) string {
	return "indicator:" + strconv.FormatInt(s.UserID, 10) + ":" + strconv.FormatInt(s.ExchangeID, 10) + ":" + s.Symbol + ":" + string(s.Timeframe) + ":" + name
}

// UserKeyPatterns are the Redis SCAN MATCH patterns of every key of the
// user with id userID, of all its exchange accounts: candles:{userId}:*
// and indicator:{userId}:* (a deleted tenant). userID must be positive.
func UserKeyPatterns(userID int64) ([]string, error) {
	if err := ValidateID("user_id", userID); err != nil {
		return nil, err
	}
	id := strconv.FormatInt(userID, 10)
	return []string{"candles:" + id + ":*", "indicator:" + id + ":*"}, nil
}

// ClearScope is what clear-cache deletes: everything of a user's exchange
// account, one symbol, or one symbol's timeframe.
type ClearScope string

// The clear-cache scopes.
const (
	ScopeAll       ClearScope = "all"
	ScopeSymbol    ClearScope = "symbol"
	ScopeTimeframe ClearScope = "timeframe"
)

// CacheSelector picks the keys of one clear-cache: a user's exchange account
// and optionally a symbol and timeframe. It is validated before any pattern
// is built from it.
type CacheSelector struct {
	UserID     int64
	ExchangeID int64
	Scope      ClearScope
	Symbol     string
	Timeframe  Timeframe
}

// Validate checks that the selector has the parts its scope needs and that
// each part is valid.
func (c CacheSelector) Validate() error {
	var f fieldErrs
	f.check("user_id", ValidateID("user_id", c.UserID))
	f.check("exchange", ValidateID("exchange", c.ExchangeID))
	switch c.Scope {
	case ScopeAll:
	case ScopeSymbol:
		f.check("symbol", ValidateSymbol(c.Symbol))
	case ScopeTimeframe:
		f.check("symbol", ValidateSymbol(c.Symbol))
		f.check("timeframe", c.Timeframe.Validate())
	default:
		f.add("scope", "%q is not one of all, symbol, timeframe", c.Scope)
	}
	return f.err()
}

// ScanPatterns are the Redis SCAN MATCH patterns for the selector's keys,
// built only from validated parts, so no input can widen them. Candle keys
// of a timeframe are matched exactly; indicator keys by a trailing '*'.
func (c CacheSelector) ScanPatterns() ([]string, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	base := strconv.FormatInt(c.UserID, 10) + ":" + strconv.FormatInt(c.ExchangeID, 10) + ":"
	switch c.Scope {
	case ScopeAll:
		return []string{"candles:" + base + "*", "indicator:" + base + "*"}, nil
	case ScopeSymbol:
		return []string{"candles:" + base + c.Symbol + ":*", "indicator:" + base + c.Symbol + ":*"}, nil
	case ScopeTimeframe:
		return []string{"candles:" + base + c.Symbol + ":" + string(c.Timeframe), "indicator:" + base + c.Symbol + ":" + string(c.Timeframe) + ":*"}, nil
	}
	return nil, fmt.Errorf("scope %q: %w", c.Scope, ErrInvalid)
}

// Matches reports whether series s falls in the selector (for dropping
// in-memory state of exactly the cleared series).
func (c CacheSelector) Matches(s SeriesID) bool {
	if s.UserID != c.UserID || s.ExchangeID != c.ExchangeID {
		return false
	}
	switch c.Scope {
	case ScopeAll:
		return true
	case ScopeSymbol:
		return s.Symbol == c.Symbol
	case ScopeTimeframe:
		return s.Symbol == c.Symbol && s.Timeframe == c.Timeframe
	}
	return false
}
