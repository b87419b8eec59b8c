// Package sim is a deterministic market simulator for the feed: a seeded
// random walk per symbol that produces trades and a level2 book, running
// faster than the wall clock by a speed factor.
//
// # Sim time
//
// Sim time runs Speed times as fast as the wall clock and equals it at
// Anchor: sim(w) = Anchor + (w − Anchor)·Speed. With Speed ≥ 1 sim time is
// never behind the wall clock, so every bar it produces starts at or after
// the wall clock's current bar and looks fresh to consumers that drop data
// older than a few bars (alerts drop values more than two bars old); with
// the default speed of 60 a 1m bar closes every wall second. Instances that
// share Seed, Speed and Anchor produce the same market at the same moment,
// so users can move between feed instances. The feed's default anchor is
// the UTC midnight of the day it starts; deployments that run several
// instances across days pin it (VIGIL_SIM_ANCHOR).
//
// # Determinism
//
// The price is a function of sim time alone: the log price is a sum of
// value-noise octaves (30 s to 3 days) hashed from (seed, symbol, octave,
// lattice point). Each sim minute has 4–8 trades at times, prices and sizes
// hashed from (seed, symbol, minute, index). History therefore rebuilds any
// interval exactly as the live simulator produced it, and backfills, gap
// fills and live bars agree to the last digit.
package sim

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"sync"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/market"
)

// Defaults of Config.
const (
	DefaultSpeed      = 60
	DefaultTick       = 50 * time.Millisecond
	DefaultBookLevels = 50
	// MaxSpeed bounds Speed (one sim hour per wall second).
	MaxSpeed = 3600
)

// ErrInvalidConfig means a Config field is out of range.
var ErrInvalidConfig = errors.New("sim: invalid config")

// Config configures a Sim.
type Config struct {
	Seed uint64
	// Speed is sim seconds per wall second, in [1, MaxSpeed].
	Speed float64
	// Anchor is the instant at which sim time equals wall time.
	Anchor time.Time
	// Tick is the wall time between two live emissions.
	Tick time.Duration
	// BookLevels is the depth of the simulated book per side.
	BookLevels int
	// Wall is the wall clock; default time.Now.
	Wall func() time.Time
}

// Sim is a running simulator; it implements market.Source.
type Sim struct {
	cfg  Config
	sink market.Sink

	mu         sync.Mutex
	refs       map[market.Channel]map[string]int
	cursor     time.Time // live trades up to here were emitted
	tradeCount uint64
	bookCount  uint64
}

// New checks cfg and returns a simulator that delivers to sink.
func New(cfg Config, sink market.Sink) (*Sim, error) {
	if cfg.Speed == 0 {
		cfg.Speed = DefaultSpeed
	}
	if cfg.Speed < 1 || cfg.Speed > MaxSpeed || math.IsNaN(cfg.Speed) {
		return nil, fmt.Errorf("%w: speed %v must be between 1 and %d (below 1 sim bars would look stale)", ErrInvalidConfig, cfg.Speed, MaxSpeed)
	}
	if cfg.Tick <= 0 {
		cfg.Tick = DefaultTick
	}
	if cfg.BookLevels <= 0 {
		cfg.BookLevels = DefaultBookLevels
	}
	if cfg.Wall == nil {
		cfg.Wall = time.Now
	}
	if cfg.Anchor.IsZero() {
		cfg.Anchor = cfg.Wall().UTC().Truncate(24 * time.Hour)
	}
	s := &Sim{cfg: cfg, sink: sink, refs: map[market.Channel]map[string]int{}}
	s.cursor = s.Now()
	return s, nil
}

// Name implements market.Source.
func (s *Sim) Name() string { return "sim" }

// Caps implements market.Source: trades build every timeframe.
func (s *Sim) Caps() market.Caps {
	return market.Caps{TradeTimeframes: contract.Timeframes, Timeframes: contract.Timeframes}
}

// Now implements market.Source: the sim clock.
func (s *Sim) Now() time.Time { return s.At(s.cfg.Wall()) }

// At is the sim time at wall time w.
func (s *Sim) At(w time.Time) time.Time {
	return s.cfg.Anchor.Add(time.Duration(float64(w.Sub(s.cfg.Anchor)) * s.cfg.Speed)).UTC()
}

// Subscribe implements market.Source.
func (s *Sim) Subscribe(ch market.Channel, product string) error {
	if err := contract.ValidateSymbol(product); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refs[ch] == nil {
		s.refs[ch] = map[string]int{}
	}
	s.refs[ch][product]++
	return nil
}

// Unsubscribe implements market.Source.
func (s *Sim) Unsubscribe(ch market.Channel, product string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch n := s.refs[ch][product]; n {
	case 0:
		return fmt.Errorf("sim: %s %s is not subscribed", ch, product)
	case 1:
		delete(s.refs[ch], product)
	default:
		s.refs[ch][product] = n - 1
	}
	return nil
}

// Status implements market.Source.
func (s *Sim) Status() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return map[string]any{"seed": s.cfg.Seed, "speed": s.cfg.Speed, "anchor": s.cfg.Anchor, "sim_time": s.cursor,
		"trades": s.tradeCount, "book_snapshots": s.bookCount}
}

// Run implements market.Source: every Tick it emits the trades of each
// subscribed product up to the sim clock, a book snapshot of each product
// with a book subscription, and the clock.
func (s *Sim) Run(ctx context.Context) error {
	tick := time.NewTicker(s.cfg.Tick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		now := s.Now()
		s.mu.Lock()
		from := s.cursor
		bars := keys(s.refs[market.ChannelBars])
		books := keys(s.refs[market.ChannelBook])
		s.mu.Unlock()
		if !now.After(from) {
			continue
		}
		emitted := 0
		for _, product := range bars {
			for _, t := range s.tradesBetween(product, from, now) {
				s.sink.Trade(t)
				emitted++
			}
		}
		for _, product := range books {
			s.sink.Book(s.book(product, now))
		}
		s.mu.Lock()
		s.cursor = now
		s.tradeCount += uint64(emitted)
		s.bookCount += uint64(len(books))
		s.mu.Unlock()
		s.sink.Clock(now)
	}
}

func keys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// History implements market.Source: the bars rebuilt from the same trades
// the live simulator emits, up to min(to, Now()).
func (s *Sim) History(ctx context.Context, product string, tf contract.Timeframe, from, to time.Time) ([]market.Bar, error) {
	if err := contract.ValidateSymbol(product); err != nil {
		return nil, err
	}
	if err := tf.Validate(); err != nil {
		return nil, err
	}
	if now := s.Now(); to.After(now) {
		to = now
	}
	start := tf.BarStart(from)
	var out []market.Bar
	for m := start.Unix() / 60; m*60 < to.Unix(); m++ {
		if m%1440 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		for _, t := range s.minuteTrades(product, m) {
			if !t.Time.Before(to) {
				break
			}
			out = addTrade(out, product, tf, t)
		}
	}
	return out, nil
}

// addTrade folds t into the last bar of bars or starts a new one.
func addTrade(bars []market.Bar, product string, tf contract.Timeframe, t market.Trade) []market.Bar {
	start := tf.BarStart(t.Time)
	if n := len(bars); n > 0 && bars[n-1].Start.Equal(start) {
		b := &bars[n-1]
		b.High = max(b.High, t.Price)
		b.Low = min(b.Low, t.Price)
		b.Close = t.Price
		b.Volume += t.Size
		return bars
	}
	return append(bars, market.Bar{Product: product, Timeframe: tf, Start: start, Open: t.Price, High: t.Price, Low: t.Price, Close: t.Price, Volume: t.Size})
}

// tradesBetween are the trades of product with time in (from, to], in order.
func (s *Sim) tradesBetween(product string, from, to time.Time) []market.Trade {
	var out []market.Trade
	for m := from.Unix() / 60; m <= to.Unix()/60; m++ {
		for _, t := range s.minuteTrades(product, m) {
			if t.Time.After(from) && !t.Time.After(to) {
				out = append(out, t)
			}
		}
	}
	return out
}

// minuteTrades are the 4–8 trades of UNIX minute m, in time order.
func (s *Sim) minuteTrades(product string, m int64) []market.Trade {
	sym := symbolHash(product)
	n := 4 + int(s.hash(sym, 1, uint64(m))%5)
	out := make([]market.Trade, n)
	slot := 60e9 / float64(n)
	for j := range n {
		u := s.unit(sym, 2, uint64(m), uint64(j))
		ns := m*60e9 + int64((float64(j)+u)*slot)
		t := float64(ns) / 1e9
		jitter := 1 + 0.0004*(s.unit(sym, 3, uint64(m), uint64(j))-0.5)
		out[j] = market.Trade{
			Product: product,
			Price:   roundPrice(math.Exp(s.logPrice(sym, t)) * jitter),
			Size:    math.Round((0.001+s.unit(sym, 4, uint64(m), uint64(j))*0.5)*1e6) / 1e6,
			Time:    time.Unix(0, ns).UTC(),
		}
	}
	return out
}

// octaves of the value noise: period in seconds and amplitude of the log price.
var octaves = []struct{ period, amp float64 }{
	{30, 0.0008}, {300, 0.002}, {3600, 0.006}, {6 * 3600, 0.015}, {3 * 86400, 0.04},
}

// logPrice is the log of the product's mid price at UNIX time t (seconds).
func (s *Sim) logPrice(sym uint64, t float64) float64 {
	// A base price per symbol between 5 and 100 000.
	v := math.Log(5) + s.unit(sym, 5, 0, 0)*math.Log(20_000)
	for k, o := range octaves {
		x := t / o.period
		i := math.Floor(x)
		f := x - i
		a := 2*s.unit(sym, 6, uint64(k), uint64(int64(i))) - 1
		b := 2*s.unit(sym, 6, uint64(k), uint64(int64(i)+1)) - 1
		v += o.amp * (a + (b-a)*f*f*(3-2*f))
	}
	return v
}

// book is the simulated level2 book of product at sim time now.
func (s *Sim) book(product string, now time.Time) market.BookUpdate {
	sym := symbolHash(product)
	mid := math.Exp(s.logPrice(sym, float64(now.UnixNano())/1e9))
	tick := mid * 0.0001
	second := uint64(now.Unix())
	u := market.BookUpdate{Product: product, Snapshot: true, Time: now}
	for i := range s.cfg.BookLevels {
		offset := tick/2 + float64(i)*tick
		u.Bids = append(u.Bids, market.Level{Price: roundPrice(mid - offset), Quantity: quantity(s.unit(sym, 7, second, uint64(i)), i)})
		u.Asks = append(u.Asks, market.Level{Price: roundPrice(mid + offset), Quantity: quantity(s.unit(sym, 8, second, uint64(i)), i)})
	}
	return u
}

func quantity(u float64, level int) float64 {
	return math.Round((0.05+u*(1+float64(level)*0.1))*1e6) / 1e6
}

// roundPrice keeps 6 significant digits.
func roundPrice(p float64) float64 {
	if p <= 0 {
		return p
	}
	scale := math.Pow(10, 5-math.Floor(math.Log10(p)))
	return math.Round(p*scale) / scale
}

func symbolHash(product string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(product))
	return h.Sum64()
}

// hash mixes the seed, the symbol and the parts into 64 bits (splitmix64).
func (s *Sim) hash(sym uint64, parts ...uint64) uint64 {
	x := mix(s.cfg.Seed ^ mix(sym))
	for _, p := range parts {
		x = mix(x ^ mix(p+0x9e3779b97f4a7c15))
	}
	return x
}

// unit is hash mapped to [0, 1).
func (s *Sim) unit(sym uint64, parts ...uint64) float64 {
	return float64(s.hash(sym, parts...)>>11) / (1 << 53)
}

func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
