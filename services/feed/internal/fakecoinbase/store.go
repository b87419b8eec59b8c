package fakecoinbase

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"time"
)

// Candle is one OHLCV bucket in the fake's store or on its candles channel.
type Candle struct {
	// Start is the bucket's start.
	Start time.Time
	// Open, High, Low, Close are prices; Volume is base volume.
	Open, High, Low, Close, Volume float64
}

// Trade is one market trade sent on the market_trades channel.
type Trade struct {
	// ID is the trade id.
	ID string
	// Price and Size are the trade's price and base amount.
	Price, Size float64
	// Side is "BUY" or "SELL".
	Side string
	// Time is when the trade happened.
	Time time.Time
}

// Level is one order book price level; Quantity 0 removes it.
type Level struct {
	// Side is "bid" or "offer".
	Side string
	// Price is the price level and Quantity the absolute size resting there.
	Price, Quantity float64
}

type bookKey struct {
	side  string
	price float64
}

// granularitySeconds maps the REST enum to bucket lengths.
var granularitySeconds = map[string]int64{
	"ONE_MINUTE":     60,
	"FIVE_MINUTE":    300,
	"FIFTEEN_MINUTE": 900,
	"THIRTY_MINUTE":  1800,
	"ONE_HOUR":       3600,
	"TWO_HOUR":       7200,
	"FOUR_HOUR":      14400,
	"SIX_HOUR":       21600,
	"ONE_DAY":        86400,
}

// candleStore holds REST candles: product → granularity → start (unix s) →
// candle. A product with an empty map is known but has no candles.
type candleStore map[string]map[string]map[int64]Candle

// AddProduct makes product known to REST, so it answers 200 instead of 404
// even without candles.
func (s *Server) AddProduct(product string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.store[product] == nil {
		s.store[product] = make(map[string]map[int64]Candle)
	}
}

// AddCandles stores candles for REST requests of product at granularity (the
// API enum, e.g. "ONE_MINUTE"), replacing any with the same start. The
// error wraps ErrUnknownGranularity.
func (s *Server) AddCandles(product, granularity string, candles ...Candle) error {
	if _, ok := granularitySeconds[granularity]; !ok {
		return fmt.Errorf("%w: %q", ErrUnknownGranularity, granularity)
	}
	s.AddProduct(product)
	s.mu.Lock()
	defer s.mu.Unlock()
	series := s.store[product][granularity]
	if series == nil {
		series = make(map[int64]Candle)
		s.store[product][granularity] = series
	}
	for _, c := range candles {
		series[c.Start.Unix()] = c
	}
	return nil
}

// GenerateCandles stores n consecutive candles of product at granularity
// starting at from (aligned down to the bucket), and returns them oldest
// first. The series is a deterministic random walk seeded by product and
// granularity, so equal arguments give equal candles.
func (s *Server) GenerateCandles(product, granularity string, from time.Time, n int) ([]Candle, error) {
	step, ok := granularitySeconds[granularity]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownGranularity, granularity)
	}
	if n < 0 {
		return nil, fmt.Errorf("%w: n is negative (%d)", ErrInvalidArgument, n)
	}
	seed := fnv.New64a()
	seed.Write([]byte(product + "/" + granularity))
	rng := rand.New(rand.NewPCG(seed.Sum64(), uint64(step)))
	start := from.Unix() / step * step
	price := 20000 + rng.Float64()*50000
	candles := make([]Candle, n)
	for i := range candles {
		open := price
		closePrice := math.Max(1, open*(1+(rng.Float64()-0.5)*0.01))
		high := math.Max(open, closePrice) * (1 + rng.Float64()*0.002)
		low := math.Min(open, closePrice) * (1 - rng.Float64()*0.002)
		candles[i] = Candle{
			Start:  time.Unix(start+int64(i)*step, 0).UTC(),
			Open:   round(open),
			High:   round(high),
			Low:    round(low),
			Close:  round(closePrice),
			Volume: round(rng.Float64() * 100),
		}
		price = closePrice
	}
	// Rounding can push open or close past high or low; keep the bucket consistent.
	for i := range candles {
		c := &candles[i]
		c.High = math.Max(c.High, math.Max(c.Open, c.Close))
		c.Low = math.Min(c.Low, math.Min(c.Open, c.Close))
	}
	if err := s.AddCandles(product, granularity, candles...); err != nil {
		return nil, err
	}
	return candles, nil
}

// round keeps two decimals, like a USD price.
func round(v float64) float64 { return math.Round(v*100) / 100 }
