package ta

import (
	"fmt"
	"math"
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
// (default DefaultReplayDepth). The Series keeps that many bars, plus the
// bars its longest window reads and up to 16 more to replay from a
// checkpoint.
func WithReplayDepth(bars int) Option {
	return func(o *seriesOptions) error {
		if bars < 1 || bars > MaxReplayDepth {
			return fmt.Errorf("%w: replay depth %d must be in [1, %d]", ErrInvalidSpec, bars, MaxReplayDepth)
		}
		o.replayDepth = bars
		return nil
	}
}

// pastBar is what a Series keeps of a closed candle: the numbers the
// indicators read (open and volume are read by none).
type pastBar struct {
	start            int64
	high, low, close float64
}

func toPastBar(c Candle) pastBar {
	var b pastBar
	b.setPrices(&c)
	return b
}

// setPrices sets b to the prices of c, field by field (no struct copy
// through the stack: see input).
func (b *pastBar) setPrices(c *Candle) {
	b.start, b.high, b.low, b.close = c.Start, c.High, c.Low, c.Close
}

// history is a ring of the latest size closed bars, addressed by bar
// index. Its storage grows with the bars seen, up to size.
type history struct {
	bars []pastBar
	size int
}

func (h *history) at(i int) pastBar { return h.bars[i%h.size] }

// slot is where bar i is stored, at most one past the newest stored bar;
// the storage grows to hold it.
func (h *history) slot(i int) *pastBar {
	if i >= len(h.bars) && i < h.size {
		h.bars = extend(h.bars, 1, h.size)
	}
	return &h.bars[i%h.size]
}

// store sets the slot of bar i to the prices of c and returns it.
func (h *history) store(i int, c *Candle) *pastBar {
	b := h.slot(i)
	b.setPrices(c)
	return b
}

// extend returns s lengthened by n elements. When the capacity does not
// suffice it at least doubles, but never beyond limit elements, so a ring
// that is still filling allocates O(log limit) times and never more than
// it will hold.
func extend[T any](s []T, n, limit int) []T {
	if len(s)+n > cap(s) {
		grown := make([]T, len(s), min(limit, max(2*cap(s), len(s)+n, 16)))
		copy(grown, s)
		s = grown
	}
	return s[:len(s)+n]
}

// checkpointEvery is how many bars apart the Series stores checkpoints: a
// correction rolls back to the checkpoint at or before the corrected bar
// and replays up to checkpointEvery-1 unchanged bars before it. Sparse
// checkpoints keep the memory of a Series mostly its bar history.
const checkpointEvery = 16

// Series computes the indicators of one candle series (one user, exchange,
// symbol and timeframe) incrementally.
//
// Its state advances only on closed candles. An in-progress candle is
// evaluated against the state of the last closed bar without changing it.
// Every checkpointEvery bars the Series stores a checkpoint of its state,
// so a corrected candle for one of the last replay-depth bars rolls back
// to the checkpoint at or before that bar and replays the bars after it.
//
// Memory grows with the bars seen, up to (replay depth + longest window +
// 16) bars of 32 bytes (start, high, low, close) and a checkpoint of 8
// bytes per state slot (1 to 4 per indicator) every 16 bars: about 38 KB
// for ema_20, ema_50, rsi_14, macd_12_26_9, atr_14 and bb_20_2 with a
// depth of 1000.
//
// A Series is not safe for concurrent use.
type Series struct {
	indicators  []indicator
	depth       int       // how many latest bars may be corrected
	state       []float64 // indicator states after the last closed bar
	scratch     []float64 // state copy for in-progress bars
	past        history   // latest closed bars, ring
	last        Candle    // the last closed candle as given
	checkpoints []float64 // ring: state before every checkpointEvery-th bar
	slots       int       // checkpoints the ring holds
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
	// A correction of the oldest correctable bar replays from up to
	// checkpointEvery-1 bars before it, reading window bars before those.
	s.past.size = s.depth + window + checkpointEvery
	s.slots = (s.past.size+checkpointEvery-1)/checkpointEvery + 1
	s.state = make([]float64, stateLen)
	s.scratch = make([]float64, stateLen)
	s.values = make([]Value, len(specs))
	s.label(s.values)
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
	return s.last, true
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
//     first. A candle with the stored high, low and close changes no value
//     (no indicator reads the open or the volume) and returns no values.
//
// Apply returns ErrInvalidCandle for bad numbers, ErrTooOld for a
// correction beyond the replay depth and ErrOutOfOrder for any other older
// candle; the Series is then unchanged.
func (s *Series) Apply(c Candle, closed bool) ([]Value, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if s.bars > 0 {
		if c.Start <= s.last.Start {
			if !closed {
				return nil, fmt.Errorf("%w: in-progress candle %d is not newer than the last closed candle %d", ErrOutOfOrder, c.Start, s.last.Start)
			}
			return s.correct(c)
		}
	}
	if !closed {
		copy(s.scratch, s.state)
		b := toPastBar(c)
		s.compute(s.values, s.scratch, &input{i: s.bars, bar: &b, prevClose: s.last.Close}, false)
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
	if want := min(len(candles), s.past.size); want > len(s.past.bars) {
		s.past.bars = extend(s.past.bars, want-len(s.past.bars), s.past.size)
	}
	n := len(s.indicators)
	out := make([]Value, len(candles)*n)
	s.label(out)
	for i, c := range candles {
		s.advance(c, out[i*n:(i+1)*n])
	}
	return out, nil
}

// advance appends closed candle c as the next bar and writes its values to
// out.
func (s *Series) advance(c Candle, out []Value) {
	i := s.bars
	if i%checkpointEvery == 0 {
		copy(s.checkpoint(i), s.state)
	}
	in := input{i: i, bar: s.past.store(i, &c), prevClose: s.last.Close}
	s.last = c
	s.compute(out, s.state, &in, true)
	s.bars++
}

// correct replaces the stored closed bar with the start of c and replays
// from the checkpoint at or before it.
func (s *Series) correct(c Candle) ([]Value, error) {
	oldest := max(0, s.bars-s.depth)
	if first := s.past.at(oldest); c.Start < first.start {
		if oldest == 0 {
			return nil, fmt.Errorf("%w: closed candle %d is older than the first bar %d", ErrOutOfOrder, c.Start, first.start)
		}
		return nil, fmt.Errorf("%w: candle %d is before %d, the oldest of the last %d bars", ErrTooOld, c.Start, first.start, s.depth)
	}
	n := s.bars - oldest
	k := oldest + sort.Search(n, func(k int) bool { return s.past.at(oldest+k).start >= c.Start })
	if k == s.bars || s.past.at(k).start != c.Start {
		return nil, fmt.Errorf("%w: closed candle %d is older than the last closed candle %d and matches no earlier bar", ErrOutOfOrder, c.Start, s.past.at(s.bars-1).start)
	}
	if k == s.bars-1 {
		s.last = c
	}
	b := toPastBar(c)
	if s.past.at(k) == b {
		return nil, nil
	}
	from := k - k%checkpointEvery
	copy(s.state, s.checkpoint(from))
	s.past.store(k, &c)
	width := len(s.indicators)
	if want := (s.bars - k) * width; want > cap(s.replayed) {
		s.replayed = make([]Value, want, max(want, 2*cap(s.replayed)))
		s.label(s.replayed[:cap(s.replayed)/width*width])
	}
	s.replayed = s.replayed[:(s.bars-k)*width]
	for i := from; i < s.bars; i++ {
		if i%checkpointEvery == 0 {
			copy(s.checkpoint(i), s.state)
		}
		// The bars before k only bring the state up to k; their values
		// are unchanged and dropped.
		out := s.values
		if i >= k {
			out = s.replayed[(i-k)*width : (i-k+1)*width]
		}
		var prevClose float64
		if i > 0 {
			prevClose = s.past.at(i - 1).close
		}
		s.compute(out, s.state, &input{i: i, bar: s.past.slot(i), prevClose: prevClose}, true)
	}
	return s.replayed, nil
}

// checkpoint is the slot holding the state before bar i, a multiple of
// checkpointEvery; the ring grows to hold it while it fills.
func (s *Series) checkpoint(i int) []float64 {
	n := len(s.state)
	slot := i / checkpointEvery % s.slots
	if end := (slot + 1) * n; end > len(s.checkpoints) {
		s.checkpoints = extend(s.checkpoints, end-len(s.checkpoints), s.slots*n)
	}
	return s.checkpoints[slot*n : (slot+1)*n]
}

// compute steps every indicator over the bar of in (bar in.i, after a
// bar that closed at in.prevClose, any number for bar 0) with state st,
// and writes the values to out, in place: out's names and kinds are
// already set (labelled).
func (s *Series) compute(out []Value, st []float64, in *input, closed bool) {
	out = out[:len(s.indicators)]
	for j := range s.indicators {
		v := &out[j]
		v.Start, v.Closed = in.bar.start, closed
		v.Warming = !s.indicators[j].step(&v.Fields, st, &s.past, in)
		if v.Warming {
			v.Fields = Fields{}
		}
	}
}

// label sets the names and kinds of values, a whole number of bars of
// s's indicators.
func (s *Series) label(values []Value) {
	for k := range values {
		spec := &s.indicators[k%len(s.indicators)].spec
		values[k].Name, values[k].Kind = spec.Name, spec.Kind
	}
}
