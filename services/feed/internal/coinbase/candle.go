package coinbase

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"time"
)

// productPattern is the product id format of the vigil contract
// (ARCHITECTURE.md §3), which also covers Coinbase's BASE-QUOTE ids.
var productPattern = regexp.MustCompile(`^[A-Z0-9]{1,20}(-[A-Z0-9]{1,20}){1,3}$`)

// ValidateProduct reports whether product is a well-formed product id such as
// "BTC-USD" or "BTC-PERP-INTX". The error wraps ErrInvalidProduct.
func ValidateProduct(product string) error {
	if !productPattern.MatchString(product) {
		return fmt.Errorf("%w: %q does not match %s", ErrInvalidProduct, product, productPattern)
	}
	return nil
}

// Candle is one OHLCV bucket. Start is the bucket's opening time in UTC.
type Candle struct {
	// Product is the product id, such as "BTC-USD".
	Product string
	// Start is the start of the bucket, in UTC.
	Start time.Time
	// Open is the first trade price in the bucket.
	Open float64
	// High is the highest trade price in the bucket.
	High float64
	// Low is the lowest trade price in the bucket.
	Low float64
	// Close is the last trade price in the bucket.
	Close float64
	// Volume is the traded base volume in the bucket.
	Volume float64
}

// Granularity is a candle bucket size, spelled as the REST API's enum.
type Granularity string

// The granularities vigil uses; they match the timeframes 1m 5m 15m 1h 4h 1d.
const (
	// OneMinute is the 1m timeframe.
	OneMinute Granularity = "ONE_MINUTE"
	// FiveMinute is the 5m timeframe, the only one the WebSocket candles channel streams.
	FiveMinute Granularity = "FIVE_MINUTE"
	// FifteenMinute is the 15m timeframe.
	FifteenMinute Granularity = "FIFTEEN_MINUTE"
	// OneHour is the 1h timeframe.
	OneHour Granularity = "ONE_HOUR"
	// FourHour is the 4h timeframe.
	FourHour Granularity = "FOUR_HOUR"
	// OneDay is the 1d timeframe.
	OneDay Granularity = "ONE_DAY"
)

var granularities = []struct {
	granularity Granularity
	timeframe   string
	duration    time.Duration
}{
	{OneMinute, "1m", time.Minute},
	{FiveMinute, "5m", 5 * time.Minute},
	{FifteenMinute, "15m", 15 * time.Minute},
	{OneHour, "1h", time.Hour},
	{FourHour, "4h", 4 * time.Hour},
	{OneDay, "1d", 24 * time.Hour},
}

// GranularityForTimeframe maps a vigil timeframe ("1m", "5m", "15m", "1h",
// "4h", "1d") to its Granularity. The error wraps ErrInvalidGranularity.
func GranularityForTimeframe(timeframe string) (Granularity, error) {
	for _, g := range granularities {
		if g.timeframe == timeframe {
			return g.granularity, nil
		}
	}
	return "", fmt.Errorf("%w: timeframe %q is not one of 1m 5m 15m 1h 4h 1d", ErrInvalidGranularity, timeframe)
}

// Duration is the bucket length, or 0 for an unsupported granularity.
func (g Granularity) Duration() time.Duration {
	for _, known := range granularities {
		if known.granularity == g {
			return known.duration
		}
	}
	return 0
}

// Timeframe is the vigil timeframe name ("1m" ... "1d"), or "" for an
// unsupported granularity.
func (g Granularity) Timeframe() string {
	for _, known := range granularities {
		if known.granularity == g {
			return known.timeframe
		}
	}
	return ""
}

// rawCandle holds a candle's fields as the exchange sends them: decimal strings.
type rawCandle struct {
	Start     string `json:"start"`
	Low       string `json:"low"`
	High      string `json:"high"`
	Open      string `json:"open"`
	Close     string `json:"close"`
	Volume    string `json:"volume"`
	ProductID string `json:"product_id"`
}

// parse converts the strings and checks that the candle is plausible:
// finite, non-negative, low ≤ open, close ≤ high.
func (r rawCandle) parse(product string) (Candle, error) {
	startSec, err := strconv.ParseInt(r.Start, 10, 64)
	if err != nil {
		return Candle{}, fmt.Errorf("candle start %q is not unix seconds", r.Start)
	}
	c := Candle{Product: product, Start: time.Unix(startSec, 0).UTC()}
	fields := []struct {
		name string
		text string
		dst  *float64
	}{
		{"open", r.Open, &c.Open},
		{"high", r.High, &c.High},
		{"low", r.Low, &c.Low},
		{"close", r.Close, &c.Close},
		{"volume", r.Volume, &c.Volume},
	}
	for _, f := range fields {
		if *f.dst, err = parseDecimal(f.text); err != nil {
			return Candle{}, fmt.Errorf("candle %s: %w", f.name, err)
		}
	}
	if c.Low > c.High || c.Open < c.Low || c.Open > c.High || c.Close < c.Low || c.Close > c.High {
		return Candle{}, fmt.Errorf("candle prices are inconsistent: open %v high %v low %v close %v", c.Open, c.High, c.Low, c.Close)
	}
	return c, nil
}

// decimalPattern is how Coinbase writes prices and sizes: plain decimal
// digits with an optional fraction and exponent. strconv.ParseFloat alone
// would also take Go's other spellings ("0x1p1", "1_0", "Inf", "+1").
var decimalPattern = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$`)

// parseDecimal parses a finite, non-negative decimal string.
func parseDecimal(text string) (float64, error) {
	if !decimalPattern.MatchString(text) {
		return 0, fmt.Errorf("%q is not a decimal", text)
	}
	v, err := strconv.ParseFloat(text, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a decimal", text)
	}
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return 0, fmt.Errorf("%q is not a finite non-negative number", text)
	}
	return v, nil
}
