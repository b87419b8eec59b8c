// Package sim is a deterministic market simulator for the feed: a seeded
// random walk per symbol that produces trades and a level2 book, running
// faster than the wall clock by a speed factor.
//
// # Sim time
//
// The sim clock has two modes (Config.Clock):
//
//   - ClockAhead (the default): sim time runs Speed times as fast as the
//     wall clock and equals it at Anchor: sim(w) = Anchor + (w − Anchor)·Speed.
//     With Speed ≥ 1 sim time is never behind the wall clock, so every bar it
//     produces starts at or after the wall clock's current bar and looks
//     fresh to consumers that drop data older than a few bars (alerts drop
//     values more than two bars old); with the default speed of 60 a 1m bar
//     closes every wall second. The price of that: after a while the bars are
//     dated in the future (at speed 60, ten hours after the anchor they are
//     25 days ahead). Tests use it to see many bars in a few seconds. The
//     default anchor is the UTC midnight of the day the simulator starts.
//   - ClockWall: sim time starts Replay before Anchor, runs Speed times as
//     fast as the wall clock until it meets it, then follows it:
//     sim(w) = min(w, Anchor − Replay + (w − Anchor)·Speed). So the
//     simulator replays a compressed recent past (Replay at Speed: 15 sim
//     minutes take 15 wall seconds at speed 60) and from then on its newest
//     bar is never in the future. The replayed bars that end more than two
//     bars before the wall clock look stale to alerts, as they should; the
//     last ones and every bar after the catch-up are fresh. The default
//     anchor is the moment the simulator starts; the dev stack pins it to
//     its own start, so that a restarted feed does not replay again.
//
// In both modes instances that share Seed, Clock, Speed, Replay and Anchor
// produce the same market at the same moment, so users can move between
// feed instances; deployments that run several instances pin the anchor
// (VIGIL_SIM_ANCHOR).
//
// # Determinism
//
// The price is a function of sim time alone: the log price is a sum of
// value-noise octaves (30 s to 3 days) hashed from (seed, symbol, octave,
// lattice point). Each sim minute has 4–8 trades whose times, sizes and
// prices are hashed from (seed, symbol, minute, index): the first and the
// last trade sit on the walk, one trade is the minute's high and one its
// low, the others lie between. History folds whole minutes from these
// summaries (constant work per minute) and the trades of a partial minute,
// summing volumes in trade order, so backfills, gap fills and live bars of
// the same interval agree to the last digit.
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
	"vigil.dev/services/feed/internal/source"
)

// Defaults of Config.
const (
	DefaultSpeed      = 60
	DefaultTick       = 50 * time.Millisecond
	DefaultBookLevels = 50
	// MaxSpeed bounds Speed (one sim hour per wall second).
	MaxSpeed = 3600
)

// Clock modes of Config.Clock.
const (
	// ClockAhead runs sim time Speed times as fast as the wall clock, ahead
	// of it.
	ClockAhead = "ahead"
	// ClockWall replays the Replay before Anchor at Speed, then follows the
	// wall clock.
	ClockWall = "wall"
)

// DefaultReplay is the compressed past that ClockWall replays by default.
const DefaultReplay = 15 * time.Minute

// ErrInvalidConfig means a Config field is out of range.
var ErrInvalidConfig = errors.New("sim: invalid config")

// Config configures a Sim.
type Config struct {
	Seed uint64
	// Clock is ClockAhead (the default when empty) or ClockWall.
	Clock string
	// Speed is sim seconds per wall second, in [1, MaxSpeed]; with ClockWall
	// only until the sim clock has caught up with the wall clock.
	Speed float64
	// Anchor is, with ClockAhead, the instant at which sim time equals wall
	// time (default: UTC midnight of the start day); with ClockWall the
	// instant at which the replay starts (default: the start).
	Anchor time.Time
	// Replay is how much past ClockWall replays at Speed before it follows
	// the wall clock (default DefaultReplay; ignored by ClockAhead).
	Replay time.Duration
	// Tick is the wall time between two live emissions.
	Tick time.Duration
	// BookLevels is the depth of the simulated book per side.
	BookLevels int
	// Wall is the wall clock; default time.Now.
	Wall func() time.Time
}

// Sim is a running simulator; it implements source.Source.
type Sim struct {
	cfg  Config
	sink source.Sink

	mu         sync.Mutex
	refs       map[source.Channel]map[string]int
	cursor     time.Time // live trades up to here were emitted
	tradeCount uint64
	bookCount  uint64
}

// New checks cfg and returns a simulator that delivers to sink.
func New(cfg Config, sink source.Sink) (*Sim, error) {
	if cfg.Speed == 0 {
		cfg.Speed = DefaultSpeed
	}
	if cfg.Speed < 1 || cfg.Speed > MaxSpeed || math.IsNaN(cfg.Speed) {
		return nil, fmt.Errorf("%w: speed %v must be between 1 and %d (below 1 sim bars would look stale)", ErrInvalidConfig, cfg.Speed, MaxSpeed)
	}
	if err := cfg.checkClock(); err != nil {
		return nil, err
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
		cfg.Anchor = defaultAnchor(cfg.Clock, cfg.Wall())
	}
	s := &Sim{cfg: cfg, sink: sink, refs: map[source.Channel]map[string]int{}}
	s.cursor = s.Now()
	return s, nil
}

// checkClock checks the clock mode and replay, filling their defaults.
func (cfg *Config) checkClock() error {
	switch cfg.Clock {
	case "":
		cfg.Clock = ClockAhead
	case ClockAhead, ClockWall:
	default:
		return fmt.Errorf("%w: clock %q must be %s or %s", ErrInvalidConfig, cfg.Clock, ClockAhead, ClockWall)
	}
	if cfg.Replay < 0 {
		return fmt.Errorf("%w: replay %v must not be negative", ErrInvalidConfig, cfg.Replay)
	}
	if cfg.Clock == ClockWall && cfg.Replay == 0 {
		cfg.Replay = DefaultReplay
	}
	if cfg.Clock == ClockWall && cfg.Speed == 1 {
		return fmt.Errorf("%w: speed 1 never catches up with the wall clock after a replay of %v (use a speed above 1)", ErrInvalidConfig, cfg.Replay)
	}
	return nil
}

// defaultAnchor is the anchor of clock when none is given: UTC midnight of
// the start day for ClockAhead, the start itself for ClockWall.
func defaultAnchor(clock string, start time.Time) time.Time {
	if clock == ClockWall {
		return start.UTC()
	}
	return start.UTC().Truncate(24 * time.Hour)
}

// Name implements source.Source.
func (s *Sim) Name() string { return "sim" }

// Caps implements source.Source: trades build every timeframe.
func (s *Sim) Caps() source.Caps {
	return source.Caps{TradeTimeframes: contract.Timeframes, Timeframes: contract.Timeframes}
}

// Now implements source.Source: the sim clock.
func (s *Sim) Now() time.Time { return s.At(s.cfg.Wall()) }

// At is the sim time at wall time w.
func (s *Sim) At(w time.Time) time.Time {
	fast := s.cfg.Anchor.Add(time.Duration(float64(w.Sub(s.cfg.Anchor)) * s.cfg.Speed))
	if s.cfg.Clock != ClockWall {
		return fast.UTC()
	}
	if sim := fast.Add(-s.cfg.Replay); sim.Before(w) {
		return sim.UTC()
	}
	return w.UTC()
}

// CaughtUp is the wall time from which a ClockWall simulator follows the
// wall clock (zero for ClockAhead).
func (s *Sim) CaughtUp() time.Time {
	if s.cfg.Clock != ClockWall {
		return time.Time{}
	}
	return s.cfg.Anchor.Add(time.Duration(float64(s.cfg.Replay) / (s.cfg.Speed - 1)))
}

// Subscribe implements source.Source.
func (s *Sim) Subscribe(ch source.Channel, product string) error {
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

// Unsubscribe implements source.Source.
func (s *Sim) Unsubscribe(ch source.Channel, product string) error {
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

// Status implements source.Source.
func (s *Sim) Status() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := map[string]any{"seed": s.cfg.Seed, "clock": s.cfg.Clock, "speed": s.cfg.Speed, "anchor": s.cfg.Anchor, "sim_time": s.cursor,
		"trades": s.tradeCount, "book_snapshots": s.bookCount}
	if s.cfg.Clock == ClockWall {
		st["replay"] = s.cfg.Replay.String()
		st["caught_up"] = s.CaughtUp()
	}
	return st
}

// Run implements source.Source: every Tick it emits the trades of each
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
		bars := keys(s.refs[source.ChannelBars])
		books := keys(s.refs[source.ChannelBook])
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

// History implements source.Source: the bars rebuilt from the same trades
// the live simulator emits, up to min(to, Now()).
func (s *Sim) History(ctx context.Context, product string, tf contract.Timeframe, from, to time.Time) ([]source.Bar, error) {
	if err := contract.ValidateSymbol(product); err != nil {
		return nil, err
	}
	if err := tf.Validate(); err != nil {
		return nil, err
	}
	if now := s.Now(); to.After(now) {
		to = now
	}
	w := s.walkOf(product)
	start := tf.BarStart(from)
	var out []source.Bar
	toNs := to.UnixNano()
	for m := start.Unix() / 60; m*60e9 < toNs; m++ {
		if m%1440 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		mb := w.minute(m)
		if (m+1)*60e9 <= toNs {
			// A whole minute: fold its summary in trade order.
			out = foldMinute(out, product, tf, m, &mb)
			continue
		}
		for _, t := range mb.trades(product, m) {
			if !t.Time.Before(to) {
				break
			}
			out = addTrade(out, product, tf, t)
		}
	}
	return out, nil
}

// foldMinute adds a whole minute to bars exactly as its trades would: the
// open is the first trade, the close the last, and the volume the sizes
// summed one by one.
func foldMinute(bars []source.Bar, product string, tf contract.Timeframe, m int64, mb *minuteBar) []source.Bar {
	start := tf.BarStart(time.Unix(m*60, 0))
	n := len(bars)
	if n == 0 || !bars[n-1].Start.Equal(start) {
		bars = append(bars, source.Bar{Product: product, Timeframe: tf, Start: start, Open: mb.price[0], High: mb.high, Low: mb.low})
		n++
	}
	b := &bars[n-1]
	b.High = max(b.High, mb.high)
	b.Low = min(b.Low, mb.low)
	b.Close = mb.price[mb.n-1]
	for j := range mb.n {
		b.Volume += mb.size[j]
	}
	return bars
}

// addTrade folds t into the last bar of bars or starts a new one.
func addTrade(bars []source.Bar, product string, tf contract.Timeframe, t source.Trade) []source.Bar {
	start := tf.BarStart(t.Time)
	if n := len(bars); n > 0 && bars[n-1].Start.Equal(start) {
		b := &bars[n-1]
		b.High = max(b.High, t.Price)
		b.Low = min(b.Low, t.Price)
		b.Close = t.Price
		b.Volume += t.Size
		return bars
	}
	return append(bars, source.Bar{Product: product, Timeframe: tf, Start: start, Open: t.Price, High: t.Price, Low: t.Price, Close: t.Price, Volume: t.Size})
}

// tradesBetween are the trades of product with time in (from, to], in order.
func (s *Sim) tradesBetween(product string, from, to time.Time) []source.Trade {
	w := s.walkOf(product)
	var out []source.Trade
	for m := from.Unix() / 60; m <= to.Unix()/60; m++ {
		mb := w.minute(m)
		for _, t := range mb.trades(product, m) {
			if t.Time.After(from) && !t.Time.After(to) {
				out = append(out, t)
			}
		}
	}
	return out
}

// maxTrades is the most trades of one sim minute.
const maxTrades = 8

// minuteBar is one sim minute: its trades' prices, sizes and offsets, and
// their high and low.
type minuteBar struct {
	n         int
	price     [maxTrades]float64
	size      [maxTrades]float64
	offset    [maxTrades]int64 // nanoseconds into the minute
	high, low float64
}

// minute derives UNIX minute m of a symbol from hashes alone: 4–8 trades,
// the first at the walk's price at its time, the last at the walk's price at
// its time, one at the high and one at the low (a little beyond the first
// and last), the others in between.
func (w walk) minute(m int64) minuteBar {
	var mb minuteBar
	mb.n = 4 + int(w.hash(1, uint64(m), 0)%5)
	slot := 60e9 / float64(mb.n)
	for j := range mb.n {
		mb.offset[j] = int64((float64(j) + w.unit(2, uint64(m), uint64(j))) * slot)
		mb.size[j] = math.Round((0.001+w.unit(4, uint64(m), uint64(j))*0.5)*1e6) / 1e6
	}
	first := math.Exp(w.logPrice(float64(m*60e9+mb.offset[0]) / 1e9))
	last := math.Exp(w.logPrice(float64(m*60e9+mb.offset[mb.n-1]) / 1e9))
	high := max(first, last) * (1 + 0.0006*w.unit(3, uint64(m), 0))
	low := min(first, last) * (1 - 0.0006*w.unit(3, uint64(m), 1))
	kHigh := 1 + int(w.hash(3, uint64(m), 2)%uint64(mb.n-2))
	kLow := kHigh + 1
	if kLow > mb.n-2 {
		kLow = 1
	}
	for j := range mb.n {
		var p float64
		switch j {
		case 0:
			p = first
		case mb.n - 1:
			p = last
		case kHigh:
			p = high
		case kLow:
			p = low
		default:
			p = low + (high-low)*w.unit(3, uint64(m), uint64(j)+3)
		}
		mb.price[j] = w.round(p)
	}
	// Rounding is monotonic, so the rounded high and low still bound the rest.
	mb.high, mb.low = w.round(high), w.round(low)
	return mb
}

// trades are the minute's trades in time order.
func (mb *minuteBar) trades(product string, m int64) []source.Trade {
	out := make([]source.Trade, mb.n)
	for j := range mb.n {
		out[j] = source.Trade{Product: product, Price: mb.price[j], Size: mb.size[j], Time: time.Unix(0, m*60e9+mb.offset[j]).UTC()}
	}
	return out
}

// octaves of the value noise: period in seconds and amplitude of the log price.
var octaves = []struct{ period, amp float64 }{
	{30, 0.0008}, {300, 0.002}, {3600, 0.006}, {6 * 3600, 0.015}, {3 * 86400, 0.04},
}

// logPrice is the log of the product's mid price at UNIX time t (seconds).
func (w walk) logPrice(t float64) float64 {
	v := w.logBase
	for k, o := range octaves {
		x := t / o.period
		i := math.Floor(x)
		f := x - i
		a := 2*w.unit(6, uint64(k), uint64(int64(i))) - 1
		b := 2*w.unit(6, uint64(k), uint64(int64(i)+1)) - 1
		v += o.amp * (a + (b-a)*f*f*(3-2*f))
	}
	return v
}

// book is the simulated level2 book of product at sim time now.
func (s *Sim) book(product string, now time.Time) source.BookUpdate {
	w := s.walkOf(product)
	mid := math.Exp(w.logPrice(float64(now.UnixNano()) / 1e9))
	tick := mid * 0.0001
	second := uint64(now.Unix())
	u := source.BookUpdate{Product: product, Snapshot: true, Time: now}
	for i := range s.cfg.BookLevels {
		offset := tick/2 + float64(i)*tick
		u.Bids = append(u.Bids, source.Level{Price: w.round(mid - offset), Quantity: quantity(w.unit(7, second, uint64(i)), i)})
		u.Asks = append(u.Asks, source.Level{Price: w.round(mid + offset), Quantity: quantity(w.unit(8, second, uint64(i)), i)})
	}
	return u
}

func quantity(u float64, level int) float64 {
	return math.Round((0.05+u*(1+float64(level)*0.1))*1e6) / 1e6
}

// round keeps about 6 significant digits of the symbol's price level.
func (w walk) round(p float64) float64 { return math.Round(p*w.scale) / w.scale }

// walk is one symbol's deterministic price walk.
type walk struct {
	key     uint64  // seed and symbol mixed
	logBase float64 // log of the base price
	scale   float64 // rounding scale: about 6 significant digits
}

// walkOf derives the walk of product from the seed.
func (s *Sim) walkOf(product string) walk {
	h := fnv.New64a()
	h.Write([]byte(product))
	w := walk{key: mix(s.cfg.Seed ^ mix(h.Sum64()))}
	// A base price per symbol between 5 and 100 000.
	w.logBase = math.Log(5) + w.unit(5, 0, 0)*math.Log(20_000)
	w.scale = math.Pow(10, 5-math.Floor(w.logBase/math.Ln10))
	return w
}

// hash mixes the walk's key with three parts (splitmix64).
func (w walk) hash(a, b, c uint64) uint64 {
	x := mix(w.key ^ mix(a+0x9e3779b97f4a7c15))
	x = mix(x ^ mix(b+0x7f4a7c159e3779b9))
	return mix(x ^ c)
}

// unit is hash mapped to [0, 1).
func (w walk) unit(a, b, c uint64) float64 {
	return float64(w.hash(a, b, c)>>11) / (1 << 53)
}

func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
