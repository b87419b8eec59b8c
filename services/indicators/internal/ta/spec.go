package ta

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Kind names an indicator algorithm.
type Kind uint8

// The indicator kinds. Their text forms ("sma", "ema", ...) are what
// Kind.MarshalText writes and ParseKind reads.
const (
	// KindSMA is the simple moving average of closes (TA-Lib SMA).
	KindSMA Kind = iota + 1
	// KindEMA is the exponential moving average of closes, seeded with the
	// SMA of the first Period closes (TA-Lib EMA).
	KindEMA
	// KindRSI is Wilder's relative strength index of closes (TA-Lib RSI).
	KindRSI
	// KindMACD is C TA-Lib's MACD (see Spec).
	KindMACD
	// KindMACDV is Spiroglou's volatility-normalised MACD:
	// (EMA(Fast) - EMA(Slow)) / ATR(Slow) * 100 with an EMA(Signal) signal.
	KindMACDV
	// KindATR is Wilder's average true range (TA-Lib ATR).
	KindATR
	// KindBBands is Bollinger Bands: SMA middle band, bands at StdDev
	// population standard deviations (TA-Lib BBANDS with an SMA).
	KindBBands
)

var kindNames = [...]string{
	KindSMA:    "sma",
	KindEMA:    "ema",
	KindRSI:    "rsi",
	KindMACD:   "macd",
	KindMACDV:  "macdv",
	KindATR:    "atr",
	KindBBands: "bbands",
}

// String returns the kind's text form, such as "ema".
func (k Kind) String() string {
	if k >= KindSMA && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// ParseKind returns the Kind whose text form is s.
func ParseKind(s string) (Kind, error) {
	for k := KindSMA; int(k) < len(kindNames); k++ {
		if kindNames[k] == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("%w: kind %q is not one of sma, ema, rsi, macd, macdv, atr, bbands", ErrInvalidSpec, s)
}

// MarshalText implements encoding.TextMarshaler.
func (k Kind) MarshalText() ([]byte, error) {
	if k < KindSMA || int(k) >= len(kindNames) {
		return nil, fmt.Errorf("%w: kind %d is unknown", ErrInvalidSpec, k)
	}
	return []byte(kindNames[k]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *Kind) UnmarshalText(text []byte) error {
	parsed, err := ParseKind(string(text))
	if err != nil {
		return err
	}
	*k = parsed
	return nil
}

// Limits on Spec fields.
const (
	// MaxPeriod is the largest period of any indicator (and of MACD's fast,
	// slow and signal periods).
	MaxPeriod = 1000
	// MaxStdDev is the largest Bollinger band width in standard deviations.
	MaxStdDev = 100
)

// namePattern is the form of an indicator name; names are Redis key parts.
var namePattern = regexp.MustCompile(`^[a-z0-9_]{1,40}$`)

// Spec configures one indicator of a Series. Which fields apply depends on
// Kind; the others must be zero:
//
//   - KindSMA, KindEMA, KindATR: Period in [1, MaxPeriod].
//   - KindRSI: Period in [2, MaxPeriod] (go-talib returns nothing for 1).
//   - KindBBands: Period in [1, MaxPeriod], StdDev in (0, MaxStdDev].
//   - KindMACD, KindMACDV: 1 <= Fast < Slow <= MaxPeriod, Signal in
//     [1, MaxPeriod]. MACD-V's ATR uses the Slow period.
//
// KindMACD is C TA-Lib's MACD (release 0.4.0): the fast EMA is seeded at
// the slow EMA's first bar with the SMA of the Fast closes ending there,
// and the signal EMA with the SMA of the first Signal MACD values. (The Go
// port go-talib seeds the fast EMA from the first closes and runs the
// signal over a zero-padded line; its values differ for the first 100-150
// bars after warm-up.) KindMACDV uses TA-Lib's EMA and ATR; its three
// fields are published together, from the bar where the signal EMA over
// the MACD-V line has its first value (vigil's own convention: TA-Lib has
// no MACD-V).
type Spec struct {
	// Name identifies the indicator in values and keys; it must match
	// ^[a-z0-9_]{1,40}$ and be unique within a Series.
	Name string `json:"name"`
	// Kind is the algorithm.
	Kind Kind `json:"kind"`
	// Period is the window of SMA, EMA, RSI, ATR and BBands.
	Period int `json:"period,omitempty"`
	// Fast is the fast EMA period of MACD and MACD-V.
	Fast int `json:"fast,omitempty"`
	// Slow is the slow EMA period of MACD and MACD-V (and MACD-V's ATR
	// period).
	Slow int `json:"slow,omitempty"`
	// Signal is the signal EMA period of MACD and MACD-V.
	Signal int `json:"signal,omitempty"`
	// StdDev is the Bollinger band distance from the middle band in
	// standard deviations.
	StdDev float64 `json:"stddev,omitempty"`
}

// SMA returns the spec of an SMA named "sma_<period>".
func SMA(period int) Spec {
	return Spec{Name: "sma_" + strconv.Itoa(period), Kind: KindSMA, Period: period}
}

// EMA returns the spec of an EMA named "ema_<period>".
func EMA(period int) Spec {
	return Spec{Name: "ema_" + strconv.Itoa(period), Kind: KindEMA, Period: period}
}

// RSI returns the spec of an RSI named "rsi_<period>".
func RSI(period int) Spec {
	return Spec{Name: "rsi_" + strconv.Itoa(period), Kind: KindRSI, Period: period}
}

// ATR returns the spec of an ATR named "atr_<period>".
func ATR(period int) Spec {
	return Spec{Name: "atr_" + strconv.Itoa(period), Kind: KindATR, Period: period}
}

// MACD returns the spec of a MACD named "macd_<fast>_<slow>_<signal>".
func MACD(fast, slow, signal int) Spec {
	return Spec{Name: "macd_" + periods(fast, slow, signal), Kind: KindMACD, Fast: fast, Slow: slow, Signal: signal}
}

// MACDV returns the spec of a MACD-V named "macdv_<fast>_<slow>_<signal>".
func MACDV(fast, slow, signal int) Spec {
	return Spec{Name: "macdv_" + periods(fast, slow, signal), Kind: KindMACDV, Fast: fast, Slow: slow, Signal: signal}
}

// BBands returns the spec of Bollinger Bands named "bb_<period>_<stddev>",
// with a decimal point in stddev written as "p" (bb_20_2, bb_20_2p5).
func BBands(period int, stdDev float64) Spec {
	k := strings.ReplaceAll(strconv.FormatFloat(stdDev, 'f', -1, 64), ".", "p")
	return Spec{Name: "bb_" + strconv.Itoa(period) + "_" + k, Kind: KindBBands, Period: period, StdDev: stdDev}
}

func periods(fast, slow, signal int) string {
	return strconv.Itoa(fast) + "_" + strconv.Itoa(slow) + "_" + strconv.Itoa(signal)
}

// Validate reports the first bad field of s, naming it, wrapped around
// ErrInvalidSpec.
func (s Spec) Validate() error {
	if !namePattern.MatchString(s.Name) {
		return fmt.Errorf("%w: name %q must match %s", ErrInvalidSpec, s.Name, namePattern)
	}
	var usesPeriod, usesMACD, usesStdDev bool
	minPeriod := 1
	switch s.Kind {
	case KindSMA, KindEMA, KindATR:
		usesPeriod = true
	case KindRSI:
		usesPeriod, minPeriod = true, 2
	case KindBBands:
		usesPeriod, usesStdDev = true, true
	case KindMACD, KindMACDV:
		usesMACD = true
	default:
		return fmt.Errorf("%w: %s: kind %s is unknown", ErrInvalidSpec, s.Name, s.Kind)
	}
	if err := s.checkInt("period", s.Period, usesPeriod, minPeriod); err != nil {
		return err
	}
	if err := s.checkInt("fast", s.Fast, usesMACD, 1); err != nil {
		return err
	}
	if err := s.checkInt("slow", s.Slow, usesMACD, 2); err != nil {
		return err
	}
	if err := s.checkInt("signal", s.Signal, usesMACD, 1); err != nil {
		return err
	}
	if usesMACD && s.Fast >= s.Slow {
		return fmt.Errorf("%w: %s: fast %d must be less than slow %d", ErrInvalidSpec, s.Name, s.Fast, s.Slow)
	}
	switch {
	case !usesStdDev && s.StdDev != 0:
		return fmt.Errorf("%w: %s: stddev is not used by %s and must be 0", ErrInvalidSpec, s.Name, s.Kind)
	case usesStdDev && !(s.StdDev > 0 && s.StdDev <= MaxStdDev):
		return fmt.Errorf("%w: %s: stddev %v must be in (0, %d]", ErrInvalidSpec, s.Name, s.StdDev, MaxStdDev)
	}
	return nil
}

func (s Spec) checkInt(field string, v int, used bool, lowest int) error {
	switch {
	case !used && v != 0:
		return fmt.Errorf("%w: %s: %s is not used by %s and must be 0", ErrInvalidSpec, s.Name, field, s.Kind)
	case used && (v < lowest || v > MaxPeriod):
		return fmt.Errorf("%w: %s: %s %d must be in [%d, %d]", ErrInvalidSpec, s.Name, field, v, lowest, MaxPeriod)
	}
	return nil
}

// Lookback is the number of closed bars before the first bar with a value,
// which is TA-Lib's lookback: the value of bar Lookback() (0-based) is the
// first one. It assumes s is valid.
func (s Spec) Lookback() int {
	switch s.Kind {
	case KindRSI, KindATR:
		return s.Period
	case KindMACD:
		return s.Slow - 1 + s.Signal - 1
	case KindMACDV:
		// The ATR(Slow) has a value from bar Slow, the signal EMA needs
		// Signal of those.
		return s.Slow + s.Signal - 1
	default: // SMA, EMA, BBands
		return s.Period - 1
	}
}

// window is how many bars before the current one the indicator reads from
// the candle history.
func (s Spec) window() int {
	switch s.Kind {
	case KindSMA, KindBBands:
		return s.Period - 1
	case KindRSI, KindATR, KindMACDV:
		return 1
	default:
		return 0
	}
}

// stateLen is how many float64 of state the indicator carries between bars.
func (s Spec) stateLen() int {
	switch s.Kind {
	case KindRSI, KindBBands:
		return 2
	case KindMACD:
		return 3
	case KindMACDV:
		return 4
	default:
		return 1
	}
}
