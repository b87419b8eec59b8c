package ta

import (
	"fmt"
	"math"
	"slices"
	"sort"
)

// Candle is one OHLCV bar.
type Candle struct {
	// Start is the bar's open time in Unix seconds (UTC).
	Start  int64
	Open   float64
	High   float64
	Low    float64
	Close  float64
	Volume float64
}

// Validate reports a non-finite or out-of-range number in c, naming the
// field, wrapped around ErrInvalidCandle. Prices must be in (0, MaxPrice];
// volume must be finite and not negative.
func (c Candle) Validate() error {
	if validPrice(c.Open) && validPrice(c.High) && validPrice(c.Low) && validPrice(c.Close) && validQuantity(c.Volume) {
		return nil
	}
	prices := [...]struct {
		name string
		v    float64
	}{{"open", c.Open}, {"high", c.High}, {"low", c.Low}, {"close", c.Close}}
	for _, p := range prices {
		if !validPrice(p.v) {
			return fmt.Errorf("%w: %d: %s %v must be a finite number in (0, %g]", ErrInvalidCandle, c.Start, p.name, p.v, float64(MaxPrice))
		}
	}
	return fmt.Errorf("%w: %d: volume %v must be a finite number >= 0", ErrInvalidCandle, c.Start, c.Volume)
}

// validPrice reports whether v is in (0, MaxPrice]; NaN is not.
func validPrice(v float64) bool { return v > 0 && v <= MaxPrice }

// validQuantity reports whether v is finite and not negative.
func validQuantity(v float64) bool { return v >= 0 && v <= math.MaxFloat64 }

// Value is the output of one indicator for one bar.
type Value struct {
	// Name is the indicator's Spec.Name.
	Name string
	// Kind is the indicator's Spec.Kind; it tells which Fields are set.
	Kind Kind
	// Start is the bar's Candle.Start.
	Start int64
	// Closed is true when the bar is closed (the value is final unless the
	// bar is corrected) and false for an in-progress bar.
	Closed bool
	// Warming is true while the indicator has fewer bars than its lookback;
	// Fields are then all zero.
	Warming bool
	// Fields are the outputs; they are always finite.
	Fields Fields
}

// DefaultReplayDepth is how many closed bars back a Series accepts
// corrections when no WithReplayDepth option is given.
const DefaultReplayDepth = 1000

// MaxReplayDepth is the largest replay depth WithReplayDepth accepts.
const MaxReplayDepth = 100_000

// MaxSpecs is the largest number of indicators in one Series.
const MaxSpecs = 64

// Option configures a Series.
type Option func(*seriesOptions) error

type seriesOptions struct {
	replayDepth int
}

// WithReplayDepth sets how many of the latest closed bars can be corrected
// (default DefaultReplayDepth). The Series keeps that many candles and
// per-bar checkpoints, plus the candles its longest window reads.
func WithReplayDepth(bars int) Option {
	return func(o *seriesOptions) error {
		if bars < 1 || bars > MaxReplayDepth {
			return fmt.Errorf("%w: replay depth %d must be in [1, %d]", ErrInvalidSpec, bars, MaxReplayDepth)
		}
		o.replayDepth = bars
		return nil
	}
}

// history is a ring of the latest closed candles, addressed by bar index.
type history struct {
	candles []Candle
}

func (h *history) at(i int) Candle { return h.candles[i%len(h.candles)] }

func (h *history) set(i int, c Candle) { h.candles[i%len(h.candles)] = c }

// Series computes the indicators of one candle series (one user, exchange,
// symbol and timeframe) incrementally.
//
// Its state advances only on closed candles. An in-progress candle is
// evaluated against the state of the last closed bar without changing it.
// Before each closed bar the Series stores a checkpoint of its state, so a
// corrected candle for one of the last replay-depth bars rolls back to the
// checkpoint before that bar and replays the bars after it.
//
// Memory: (replay depth + longest window) candles of 48 bytes plus as many
// checkpoints of 8 bytes per state slot (1 to 4 per indicator); about
// 170 KB for sma_50, ema_20, rsi_14, atr_14, bb_20_2, macd_12_26_9 and
// macdv_12_26_9 with a depth of 1000.
//
// A Series is not safe for concurrent use.
type Series struct {
	indicators  []indicator
	depth       int       // how many latest bars may be corrected
	state       []float64 // indicator states after the last closed bar
	scratch     []float64 // state copy for in-progress bars
	past        history   // latest closed candles, ring
	checkpoints []float64 // ring parallel to past: state before each bar
	bars        int       // closed bars since the start
	values      []Value   // result buffer of one bar
	replayed    []Value   // result buffer of a correction
}

// NewSeries returns an empty Series computing the indicators specs, in that
// order. It validates every spec and rejects duplicate names.
func NewSeries(specs []Spec, opts ...Option) (*Series, error) {
	o := seriesOptions{replayDepth: DefaultReplayDepth}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if len(specs) == 0 || len(specs) > MaxSpecs {
		return nil, fmt.Errorf("%w: specs has %d indicators, want 1 to %d", ErrInvalidSpec, len(specs), MaxSpecs)
	}
	s := &Series{depth: o.replayDepth, indicators: make([]indicator, 0, len(specs))}
	names := make(map[string]bool, len(specs))
	stateLen, window := 0, 0
	for _, spec := range specs {
		if err := spec.Validate(); err != nil {
			return nil, err
		}
		if names[spec.Name] {
			return nil, fmt.Errorf("%w: name %q is used twice", ErrInvalidSpec, spec.Name)
		}
		names[spec.Name] = true
		s.indicators = append(s.indicators, newIndicator(spec, stateLen))
		stateLen += spec.stateLen()
		window = max(window, spec.window())
	}
	size := s.depth + window
	s.state = make([]float64, stateLen)
	s.scratch = make([]float64, stateLen)
	s.past.candles = make([]Candle, size)
	s.checkpoints = make([]float64, size*stateLen)
	s.values = make([]Value, len(specs))
	return s, nil
}

// Specs returns the specs of the indicators, in output order.
func (s *Series) Specs() []Spec {
	specs := make([]Spec, len(s.indicators))
	for i := range s.indicators {
		specs[i] = s.indicators[i].spec
	}
	return specs
}

// LastClosed returns the last closed candle, or false if there is none.
func (s *Series) LastClosed() (Candle, bool) {
	if s.bars == 0 {
		return Candle{}, false
	}
	return s.past.at(s.bars - 1), true
}

// Reset forgets every candle and all indicator state.
func (s *Series) Reset() {
	s.bars = 0
	clear(s.state)
}

// Apply feeds one candle and returns the resulting values, one per
// indicator in Specs order for each bar it computed. The returned slice is
// owned by the Series and valid until its next method call.
//
//   - An in-progress candle (closed false) newer than the last closed one
//     returns its bar's values and leaves the state unchanged.
//   - A closed candle newer than the last closed one advances the state and
//     returns its bar's values.
//   - A closed candle with the start of one of the last replay-depth closed
//     bars is a correction: the Series rolls back to before that bar,
//     replays it and every later bar, and returns their values, oldest bar
//     first. A candle equal to the stored one changes nothing and returns no
//     values.
//
// Apply returns ErrInvalidCandle for bad numbers, ErrTooOld for a
// correction beyond the replay depth and ErrOutOfOrder for any other older
// candle; the Series is then unchanged.
func (s *Series) Apply(c Candle, closed bool) ([]Value, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if s.bars > 0 {
		last := s.past.at(s.bars - 1)
		if c.Start <= last.Start {
			if !closed {
				return nil, fmt.Errorf("%w: in-progress candle %d is not newer than the last closed candle %d", ErrOutOfOrder, c.Start, last.Start)
			}
			return s.correct(c)
		}
	}
	if !closed {
		copy(s.scratch, s.state)
		s.compute(s.values, s.scratch, s.bars, c, false)
		return s.values, nil
	}
	s.advance(c, s.values)
	return s.values, nil
}

// Rebuild resets the Series and feeds candles as closed bars, which must
// have strictly increasing starts. It returns the values of every bar, oldest
// first, in a new slice. On error the Series is unchanged.
func (s *Series) Rebuild(candles []Candle) ([]Value, error) {
	for i, c := range candles {
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("candle %d: %w", i, err)
		}
		if i > 0 && c.Start <= candles[i-1].Start {
			return nil, fmt.Errorf("%w: candle %d starts at %d, not after %d", ErrOutOfOrder, i, c.Start, candles[i-1].Start)
		}
	}
	s.Reset()
	n := len(s.indicators)
	out := make([]Value, len(candles)*n)
	for i, c := range candles {
		s.advance(c, out[i*n:(i+1)*n])
	}
	return out, nil
}

// advance appends closed candle c as the next bar and writes its values to
// out.
func (s *Series) advance(c Candle, out []Value) {
	i := s.bars
	copy(s.checkpoint(i), s.state)
	s.past.set(i, c)
	s.compute(out, s.state, i, c, true)
	s.bars++
}

// correct replaces the stored closed candle with the start of c and replays
// from there.
func (s *Series) correct(c Candle) ([]Value, error) {
	oldest := max(0, s.bars-s.depth)
	if first := s.past.at(oldest); c.Start < first.Start {
		if oldest == 0 {
			return nil, fmt.Errorf("%w: closed candle %d is older than the first bar %d", ErrOutOfOrder, c.Start, first.Start)
		}
		return nil, fmt.Errorf("%w: candle %d is before %d, the oldest of the last %d bars", ErrTooOld, c.Start, first.Start, s.depth)
	}
	n := s.bars - oldest
	k := oldest + sort.Search(n, func(k int) bool { return s.past.at(oldest+k).Start >= c.Start })
	if k == s.bars || s.past.at(k).Start != c.Start {
		return nil, fmt.Errorf("%w: closed candle %d is older than the last closed candle %d and matches no earlier bar", ErrOutOfOrder, c.Start, s.past.at(s.bars-1).Start)
	}
	if s.past.at(k) == c {
		return nil, nil
	}
	copy(s.state, s.checkpoint(k))
	s.past.set(k, c)
	width := len(s.indicators)
	s.replayed = slices.Grow(s.replayed[:0], (s.bars-k)*width)[:(s.bars-k)*width]
	for i := k; i < s.bars; i++ {
		copy(s.checkpoint(i), s.state)
		out := s.replayed[(i-k)*width : (i-k+1)*width]
		s.compute(out, s.state, i, s.past.at(i), true)
	}
	return s.replayed, nil
}

// checkpoint is the slot holding the state before bar i.
func (s *Series) checkpoint(i int) []float64 {
	n := len(s.state)
	slot := i % len(s.past.candles)
	return s.checkpoints[slot*n : (slot+1)*n]
}

// compute steps every indicator over bar i with state st and writes the
// values to out.
func (s *Series) compute(out []Value, st []float64, i int, c Candle, closed bool) {
	for j := range s.indicators {
		ind := &s.indicators[j]
		f, ok := ind.step(st, &s.past, i, c)
		out[j] = Value{Name: ind.spec.Name, Kind: ind.spec.Kind, Start: c.Start, Closed: closed, Warming: !ok, Fields: f}
	}
}
