// Package ta is the indicator math of vigil-indicators: incremental
// technical indicators (SMA, EMA, RSI, MACD, MACD-V, ATR, Bollinger Bands)
// that reproduce the C TA-Lib library's results (release 0.4.0, default
// compatibility mode, unstable periods 0), and order-book metrics for a
// level2 book.
//
// A Series holds the indicators of one candle series (one user, exchange,
// symbol and timeframe). It advances on closed candles only, computes
// in-progress values without changing its state, and replays corrected past
// candles from checkpoints taken every few bars. Every update is O(1) in the indicator
// periods and allocates nothing in steady state.
//
// Nothing in this package does I/O; it is not safe for concurrent use.
package ta

import "errors"

// Errors returned by this package; they are wrapped with details, so check
// them with errors.Is.
var (
	// ErrInvalidSpec reports an indicator specification or Series option
	// with a bad field.
	ErrInvalidSpec = errors.New("invalid indicator spec")
	// ErrInvalidCandle reports a candle with a non-finite or out-of-range
	// number.
	ErrInvalidCandle = errors.New("invalid candle")
	// ErrOutOfOrder reports a candle that is older than the last closed one
	// without being a correction of a known bar, or an in-progress candle for
	// a bar that is already closed.
	ErrOutOfOrder = errors.New("candle out of order")
	// ErrTooOld reports a correction of a bar that lies beyond the replay
	// depth of the Series; rebuild the series from history instead.
	ErrTooOld = errors.New("candle older than the replay depth")
	// ErrInvalidLevel reports an order-book level with a bad side, price or
	// quantity.
	ErrInvalidLevel = errors.New("invalid book level")
	// ErrInvalidBand reports a bad band width for book metrics.
	ErrInvalidBand = errors.New("invalid band")
	// ErrBookEmpty reports book metrics asked of a book with an empty side.
	ErrBookEmpty = errors.New("book side empty")
)

// MaxPrice is the largest price (and the largest magnitude of any candle
// number but volume) this package accepts. It keeps every running sum far
// from overflow, so no indicator can produce an infinity.
const MaxPrice = 1e15
