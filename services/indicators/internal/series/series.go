package series

import (
	"cmp"
	"errors"
	"slices"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/indicators/internal/catalog"
	"vigil.dev/services/indicators/internal/ta"
)

// replayDepth is how many closed bars back a corrected candle is replayed
// from a checkpoint; an older correction rebuilds the series from Redis.
const replayDepth = ta.DefaultReplayDepth

// bar is what a series remembers of one bar besides ta's state.
type bar struct {
	start int64
	// version is the version of the bar's candle.
	version int64
	// dep is the version of the bar's indicator values: the highest
	// candle version of this and every earlier bar, so that values
	// recomputed after a correction replace the stored ones (redisstore
	// writes only newer versions) while a redelivered candle writes
	// nothing new.
	dep   int64
	close float64
}

// series is the indicator state of one candle series this instance owns.
type series struct {
	id    contract.SeriesID
	specs []ta.Spec
	calc  *ta.Series
	// closed are the closed bars in calc, oldest first: at least the last
	// replayDepth of them, at most closedSlack more.
	closed []bar
	// baseDep is the dep of the newest bar dropped from closed.
	baseDep int64
	// open is the in-progress bar last evaluated (start 0: none).
	open bar
	// warming is how many indicators warmed up at the latest bar computed.
	warming int
	// kept is true while the series is kept over its user's pause
	// (Engine.keepsPaused); resume catches it up.
	kept bool
}

func newSeries(id contract.SeriesID, specs []ta.Spec) (*series, error) {
	calc, err := ta.NewSeries(specs, ta.WithReplayDepth(replayDepth))
	if err != nil {
		return nil, err
	}
	return &series{id: id, specs: specs, calc: calc}, nil
}

func toTA(c contract.Candle) ta.Candle {
	return ta.Candle{Start: c.Start, Open: c.Open, High: c.High, Low: c.Low, Close: c.Close, Volume: c.Volume}
}

// lastDep is the dep of the newest closed bar.
func (s *series) lastDep() int64 {
	if n := len(s.closed); n > 0 {
		return s.closed[n-1].dep
	}
	return s.baseDep
}

// lastClosed is the newest closed bar, if any.
func (s *series) lastClosed() (bar, bool) {
	if n := len(s.closed); n > 0 {
		return s.closed[n-1], true
	}
	return bar{}, false
}

// closedSlack is how many closed bars beyond replayDepth a series keeps
// before it drops the oldest, so that it moves its bars once every
// closedSlack bars rather than on every bar.
const closedSlack = replayDepth / 8

// push appends a closed bar; beyond replayDepth+closedSlack bars it drops
// the oldest, down to replayDepth, in place. The bars' storage grows with
// the bars seen up to that bound, and no further.
func (s *series) push(b bar) {
	const limit = replayDepth + closedSlack
	if n := len(s.closed); n == limit {
		s.baseDep = s.closed[n-replayDepth].dep
		s.closed = s.closed[:copy(s.closed, s.closed[n-replayDepth+1:])]
	}
	if len(s.closed) == cap(s.closed) {
		grown := make([]bar, len(s.closed), min(limit, max(2*cap(s.closed), 16)))
		copy(grown, s.closed)
		s.closed = grown
	}
	s.closed = append(s.closed, b)
}

// update turns one bar's ta values into an IndicatorUpdate: warm values
// by name, the others listed as warming.
func (s *series) update(values []ta.Value, b bar, closed bool, version int64) contract.IndicatorUpdate {
	u := contract.IndicatorUpdate{SeriesID: s.id, Start: b.start, Closed: closed, Version: version, Close: b.close,
		Values: make(map[string]contract.Fields, len(values))}
	for _, v := range values {
		if f, ok := catalog.Fields(v); ok {
			u.Values[v.Name] = f
		} else {
			u.Warming = append(u.Warming, v.Name)
		}
	}
	s.warming = len(u.Warming)
	return u
}

// needsRebuild reports whether a ta error means the series must be rebuilt
// from Redis (the candle does not fit the state) rather than the candle
// being bad.
func needsRebuild(err error) bool {
	return errors.Is(err, ta.ErrOutOfOrder) || errors.Is(err, ta.ErrTooOld)
}

// apply feeds one candle update and returns the updates of every bar it
// changed. It returns nothing for a stale candle (an older version of a
// bar, an in-progress update of a closed bar), rebuild true when the candle
// does not fit the state (out of order, beyond the replay depth), and
// ta.ErrInvalidCandle for numbers ta rejects.
func (s *series) apply(c contract.Candle) (ups []contract.IndicatorUpdate, rebuild bool, err error) {
	tc := toTA(c)
	if err := tc.Validate(); err != nil {
		return nil, false, err
	}
	last, hasLast := s.lastClosed()
	switch {
	case !c.Closed:
		if hasLast && c.Start <= last.start {
			return nil, false, nil
		}
		if s.open.start > c.Start || (s.open.start == c.Start && c.Version <= s.open.version) {
			return nil, false, nil
		}
		values, err := s.calc.Apply(tc, false)
		if err != nil {
			return nil, needsRebuild(err), ignoreRebuild(err)
		}
		s.open = bar{start: c.Start, version: c.Version, dep: max(c.Version, s.lastDep()), close: c.Close}
		return []contract.IndicatorUpdate{s.update(values, s.open, false, s.open.dep)}, false, nil
	case hasLast && c.Start <= last.start:
		return s.correct(c, tc)
	}
	switch {
	case s.open.start > c.Start:
		// An in-progress bar after this one was evaluated, so this bar
		// must have been closed already: the state missed it.
		return nil, true, nil
	case s.open.start == c.Start && c.Version <= s.open.version:
		return nil, false, nil
	}
	values, err := s.calc.Apply(tc, true)
	if err != nil {
		return nil, needsRebuild(err), ignoreRebuild(err)
	}
	b := bar{start: c.Start, version: c.Version, dep: max(c.Version, s.lastDep()), close: c.Close}
	if s.open.start == c.Start {
		// The closed values must replace the in-progress ones stored
		// under the open bar's version.
		b.dep = max(b.dep, s.open.dep+1)
		s.open = bar{}
	}
	s.push(b)
	return []contract.IndicatorUpdate{s.update(values, b, true, b.dep)}, false, nil
}

// ignoreRebuild drops the errors that needsRebuild handles.
func ignoreRebuild(err error) error {
	if needsRebuild(err) {
		return nil
	}
	return err
}

// correct applies a newer version of an already closed bar: ta replays
// from that bar's checkpoint and every later bar gets new values under a
// higher dep.
func (s *series) correct(c contract.Candle, tc ta.Candle) ([]contract.IndicatorUpdate, bool, error) {
	k, found := slices.BinarySearchFunc(s.closed, c.Start, func(b bar, start int64) int { return cmp.Compare(b.start, start) })
	if !found {
		return nil, true, nil
	}
	if c.Version <= s.closed[k].version {
		return nil, false, nil
	}
	values, err := s.calc.Apply(tc, true)
	if err != nil {
		return nil, needsRebuild(err), ignoreRebuild(err)
	}
	s.closed[k].version, s.closed[k].close = c.Version, c.Close
	dep := s.baseDep
	if k > 0 {
		dep = s.closed[k-1].dep
	}
	for i := k; i < len(s.closed); i++ {
		dep = max(dep, s.closed[i].version)
		s.closed[i].dep = dep
	}
	width := len(s.specs)
	ups := make([]contract.IndicatorUpdate, 0, len(values)/width)
	for i := 0; i*width < len(values); i++ {
		b := s.closed[k+i]
		ups = append(ups, s.update(values[i*width:(i+1)*width], b, true, b.dep))
	}
	return ups, false, nil
}

// rebuild replaces the state with the stored candles (oldest first, one
// per bar) and returns the update of every bar. Every candle but the
// newest counts as closed (a later bar exists); the newest as its Closed
// says. Candles ta rejects are skipped and counted.
func (s *series) rebuild(candles []contract.Candle) (ups []contract.IndicatorUpdate, skipped int) {
	valid := make([]contract.Candle, 0, len(candles))
	for _, c := range candles {
		if toTA(c).Validate() != nil || (len(valid) > 0 && c.Start <= valid[len(valid)-1].Start) {
			skipped++
			continue
		}
		valid = append(valid, c)
	}
	var open *contract.Candle
	if n := len(valid); n > 0 && !valid[n-1].Closed {
		open = &valid[n-1]
		valid = valid[:n-1]
	}
	closedTA := make([]ta.Candle, len(valid))
	for i, c := range valid {
		closedTA[i] = toTA(c)
	}
	// The candles are valid and strictly increasing, so Rebuild succeeds.
	values, _ := s.calc.Rebuild(closedTA)
	s.closed, s.baseDep, s.open, s.warming = s.closed[:0], 0, bar{}, 0
	width := len(s.specs)
	ups = make([]contract.IndicatorUpdate, 0, len(valid)+1)
	dep := int64(0)
	for i, c := range valid {
		dep = max(dep, c.Version)
		b := bar{start: c.Start, version: c.Version, dep: dep, close: c.Close}
		s.push(b)
		ups = append(ups, s.update(values[i*width:(i+1)*width], b, true, dep))
	}
	if open != nil {
		values, err := s.calc.Apply(toTA(*open), false)
		if err == nil {
			s.open = bar{start: open.Start, version: open.Version, dep: max(open.Version, dep), close: open.Close}
			ups = append(ups, s.update(values, s.open, false, s.open.dep))
		}
	}
	return ups, skipped
}

// catchUp applies the stored candles of a kept series from its last closed
// bar on, oldest first, every one but the newest as closed (as rebuild
// counts them), and returns the updates of the bars they changed; a
// candle equal to what the series holds changes nothing. Candles ta
// rejects are skipped, as rebuild skips them. ok is false when a candle
// does not fit the state: the series must be rebuilt.
func (s *series) catchUp(candles []contract.Candle) (ups []contract.IndicatorUpdate, ok bool) {
	for i, c := range candles {
		if i < len(candles)-1 {
			c.Closed = true
		}
		applied, rebuild, err := s.apply(c)
		switch {
		case rebuild:
			return nil, false
		case err == nil:
			ups = append(ups, applied...)
		}
	}
	return ups, true
}
