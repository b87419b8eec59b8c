package ta

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// feedClosed feeds candles as closed bars into a new Series of specs and
// returns the values per bar.
func feedClosed(t *testing.T, specs []Spec, candles []Candle) [][]Value {
	t.Helper()
	s, err := NewSeries(specs)
	if err != nil {
		t.Fatalf("NewSeries: %v", err)
	}
	out := make([][]Value, len(candles))
	for i, c := range candles {
		values, err := s.Apply(c, true)
		if err != nil {
			t.Fatalf("Apply bar %d: %v", i, err)
		}
		out[i] = slices.Clone(values)
	}
	return out
}

func TestSeriesMatchesTalib(t *testing.T) {
	candles := btcCandles(t)
	for _, spec := range testSpecs {
		t.Run(spec.Name, func(t *testing.T) {
			if got, want := spec.Lookback(), talibLookback(spec); got != want {
				t.Fatalf("Lookback() = %d, TA-Lib lookback %d", got, want)
			}
			want := oracle(spec, candles)
			worst := 0.0
			for i, values := range feedClosed(t, []Spec{spec}, candles) {
				if len(values) != 1 {
					t.Fatalf("bar %d: %d values, want 1", i, len(values))
				}
				if values[0].Start != candles[i].Start || !values[0].Closed {
					t.Fatalf("bar %d: start %d closed %v, want %d true", i, values[0].Start, values[0].Closed, candles[i].Start)
				}
				worst = max(worst, checkValue(t, spec, i, values[0], want[i]))
			}
			t.Logf("%d bars, first value at bar %d, largest scaled error %.3g", len(candles), spec.Lookback(), worst)
		})
	}
}

// TestSeriesAllSpecsTogether checks that indicators sharing one Series keep
// separate state.
func TestSeriesAllSpecsTogether(t *testing.T) {
	candles := btcCandles(t)
	together := feedClosed(t, testSpecs, candles)
	for j, spec := range testSpecs {
		want := oracle(spec, candles)
		for i := range candles {
			checkValue(t, spec, i, together[i][j], want[i])
		}
	}
}

// partialOf returns a random in-progress version of c: same start and open,
// other prices drawn within c's range.
func partialOf(rng *rand.Rand, c Candle) Candle {
	between := func() float64 { return c.Low + rng.Float64()*(c.High-c.Low) }
	p := Candle{Start: c.Start, Open: c.Open, Close: between(), Volume: c.Volume * rng.Float64()}
	p.High = max(p.Open, p.Close, between())
	p.Low = min(p.Open, p.Close, between())
	return p
}

func TestSeriesInProgress(t *testing.T) {
	candles := btcCandles(t)
	specs := testSpecs
	closedOnly := feedClosed(t, specs, candles)
	s, err := NewSeries(specs)
	if err != nil {
		t.Fatalf("NewSeries: %v", err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	history := make([]Candle, 0, len(candles))
	for i, c := range candles {
		// Checking go-talib over every prefix is quadratic: check the
		// warm-up bars and a sample after them.
		checkOracle := i < 120 || i%25 == 0
		for range 3 {
			partial := partialOf(rng, c)
			values, err := s.Apply(partial, false)
			if err != nil {
				t.Fatalf("bar %d in progress: %v", i, err)
			}
			if !checkOracle {
				continue
			}
			withPartial := append(history, partial)
			for j, spec := range specs {
				if values[j].Closed || values[j].Start != c.Start {
					t.Fatalf("%s bar %d in progress: closed %v start %d", spec.Name, i, values[j].Closed, values[j].Start)
				}
				var want Fields
				if i >= spec.Lookback() {
					want = oracle(spec, withPartial)[i]
				}
				checkValue(t, spec, i, values[j], want)
			}
		}
		values, err := s.Apply(c, true)
		if err != nil {
			t.Fatalf("bar %d closed: %v", i, err)
		}
		if !slices.Equal(values, closedOnly[i]) {
			t.Fatalf("bar %d: after in-progress updates\n got %+v\nwant %+v", i, values, closedOnly[i])
		}
		history = append(history, c)
	}
}

func TestSeriesCorrection(t *testing.T) {
	candles := btcCandles(t)
	const fed = 1900
	for _, back := range []int{0, 1, 4, 49, 499, DefaultReplayDepth - 1} {
		t.Run("back_"+strconv.Itoa(back), func(t *testing.T) {
			s, err := NewSeries(testSpecs)
			if err != nil {
				t.Fatalf("NewSeries: %v", err)
			}
			for i, c := range candles[:fed] {
				if _, err := s.Apply(c, true); err != nil {
					t.Fatalf("Apply bar %d: %v", i, err)
				}
			}
			k := fed - 1 - back
			corrected := slices.Clone(candles)
			fix := corrected[k]
			fix.Close *= 1.01
			fix.High = max(fix.High, fix.Close)
			fix.Volume++
			corrected[k] = fix
			want := make([][]Fields, len(testSpecs))
			for j, spec := range testSpecs {
				want[j] = oracle(spec, corrected)
			}

			values, err := s.Apply(fix, true)
			if err != nil {
				t.Fatalf("Apply correction of bar %d: %v", k, err)
			}
			width := len(testSpecs)
			if len(values) != (fed-k)*width {
				t.Fatalf("correction returned %d values, want %d bars x %d", len(values), fed-k, width)
			}
			for n, v := range values {
				i := k + n/width
				if v.Start != candles[i].Start {
					t.Fatalf("value %d is for %d, want bar %d (%d)", n, v.Start, i, candles[i].Start)
				}
				checkValue(t, testSpecs[n%width], i, v, want[n%width][i])
			}
			if values, err := s.Apply(fix, true); err != nil || values != nil {
				t.Fatalf("repeating the correction: %d values, %v; want none, nil", len(values), err)
			}
			for i := fed; i < len(candles); i++ {
				values, err := s.Apply(candles[i], true)
				if err != nil {
					t.Fatalf("Apply bar %d after correction: %v", i, err)
				}
				for j, spec := range testSpecs {
					checkValue(t, spec, i, values[j], want[j][i])
				}
			}
		})
	}
}

func TestSeriesRejects(t *testing.T) {
	candles := btcCandles(t)[:50]
	last := candles[len(candles)-1]
	nan, inf := math.NaN(), math.Inf(1)
	withField := func(f func(*Candle)) Candle {
		c := last
		c.Start += 3600
		f(&c)
		return c
	}
	at := func(start int64) Candle {
		c := last
		c.Start = start
		return c
	}
	tests := []struct {
		name    string
		candle  Candle
		closed  bool
		wantErr error
		wantMsg string
	}{
		{"open NaN", withField(func(c *Candle) { c.Open = nan }), true, ErrInvalidCandle, "open NaN"},
		{"high +Inf", withField(func(c *Candle) { c.High = inf }), false, ErrInvalidCandle, "high +Inf"},
		{"low -Inf", withField(func(c *Candle) { c.Low = -inf }), true, ErrInvalidCandle, "low -Inf"},
		{"close negative", withField(func(c *Candle) { c.Close = -1 }), true, ErrInvalidCandle, "close -1"},
		{"low zero", withField(func(c *Candle) { c.Low = 0 }), true, ErrInvalidCandle, "low 0"},
		{"close too large", withField(func(c *Candle) { c.Close = 2 * MaxPrice }), true, ErrInvalidCandle, "close 2e+15"},
		{"volume NaN", withField(func(c *Candle) { c.Volume = nan }), true, ErrInvalidCandle, "volume NaN"},
		{"volume negative", withField(func(c *Candle) { c.Volume = -2 }), true, ErrInvalidCandle, "volume -2"},
		{"in progress for the last closed bar", last, false, ErrOutOfOrder, "not newer than the last closed"},
		{"in progress for an older bar", candles[10], false, ErrOutOfOrder, "not newer than the last closed"},
		{"closed between known bars", at(candles[20].Start + 60), true, ErrOutOfOrder, "matches no earlier bar"},
		{"closed before the first bar", at(candles[0].Start - 3600), true, ErrOutOfOrder, "older than the first bar"},
	}
	s, err := NewSeries([]Spec{EMA(5), MACDV(3, 6, 2)})
	if err != nil {
		t.Fatalf("NewSeries: %v", err)
	}
	for _, c := range candles {
		if _, err := s.Apply(c, true); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	next := withField(func(*Candle) {})
	reference, err := NewSeries([]Spec{EMA(5), MACDV(3, 6, 2)})
	if err != nil {
		t.Fatalf("NewSeries: %v", err)
	}
	if _, err := reference.Rebuild(candles); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	want, err := reference.Apply(next, false)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			values, err := s.Apply(tt.candle, tt.closed)
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Apply error = %v, want %v containing %q", err, tt.wantErr, tt.wantMsg)
			}
			if values != nil {
				t.Errorf("Apply returned %d values with the error", len(values))
			}
			// The series is unchanged: the next bar gives the reference values.
			got, err := s.Apply(next, false)
			if err != nil || !slices.Equal(got, want) {
				t.Fatalf("after the rejected candle: %+v, %v; want %+v", got, err, want)
			}
		})
	}
}

func TestSeriesCorrectionTooOld(t *testing.T) {
	candles := btcCandles(t)[:40]
	s, err := NewSeries([]Spec{SMA(5), RSI(3)}, WithReplayDepth(10))
	if err != nil {
		t.Fatalf("NewSeries: %v", err)
	}
	if _, err := s.Rebuild(candles); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	tests := []struct {
		name    string
		bar     int
		wantErr error
	}{
		{"oldest correctable bar", len(candles) - 10, nil},
		{"one bar beyond the depth", len(candles) - 11, ErrTooOld},
		{"first bar", 0, ErrTooOld},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fix := candles[tt.bar]
			fix.Close += 100
			fix.High += 100
			values, err := s.Apply(fix, true)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("correcting bar %d: %v, want %v", tt.bar, err, tt.wantErr)
			}
			if err == nil && len(values) != (len(candles)-tt.bar)*2 {
				t.Fatalf("correcting bar %d returned %d values, want %d", tt.bar, len(values), (len(candles)-tt.bar)*2)
			}
		})
	}
}

func TestSeriesRebuildAndReset(t *testing.T) {
	candles := btcCandles(t)[:300]
	specs := []Spec{RSI(14), BBands(20, 2), MACD(12, 26, 9)}
	byApply := feedClosed(t, specs, candles)
	s, err := NewSeries(specs)
	if err != nil {
		t.Fatalf("NewSeries: %v", err)
	}
	if got := s.Specs(); !slices.Equal(got, specs) {
		t.Fatalf("Specs() = %+v, want %+v", got, specs)
	}
	values, err := s.Rebuild(candles)
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	if want := slices.Concat(byApply...); !slices.Equal(values, want) {
		t.Fatalf("Rebuild values differ from feeding the candles one by one")
	}
	if last, ok := s.LastClosed(); !ok || last != candles[len(candles)-1] {
		t.Fatalf("LastClosed = %+v, %v; want the last candle", last, ok)
	}

	unsorted := slices.Clone(candles[:20])
	unsorted[5], unsorted[6] = unsorted[6], unsorted[5]
	if _, err := s.Rebuild(unsorted); !errors.Is(err, ErrOutOfOrder) || !strings.Contains(err.Error(), "candle 6") {
		t.Fatalf("Rebuild of unsorted candles: %v, want ErrOutOfOrder naming candle 6", err)
	}
	bad := slices.Clone(candles[:20])
	bad[3].Close = math.NaN()
	if _, err := s.Rebuild(bad); !errors.Is(err, ErrInvalidCandle) || !strings.Contains(err.Error(), "candle 3") {
		t.Fatalf("Rebuild with a NaN close: %v, want ErrInvalidCandle naming candle 3", err)
	}
	if last, ok := s.LastClosed(); !ok || last != candles[len(candles)-1] {
		t.Fatalf("a failed Rebuild changed the series: LastClosed = %+v, %v", last, ok)
	}

	s.Reset()
	if _, ok := s.LastClosed(); ok {
		t.Fatalf("LastClosed after Reset reports a candle")
	}
	for i, c := range candles {
		values, err := s.Apply(c, true)
		if err != nil {
			t.Fatalf("Apply bar %d after Reset: %v", i, err)
		}
		if !slices.Equal(values, byApply[i]) {
			t.Fatalf("bar %d after Reset: %+v, want %+v", i, values, byApply[i])
		}
	}
}

// TestSeriesFlatMarketIsFinite feeds a market that does not move, then
// drops and stays flat until the ATR underflows: the denominators of RSI,
// Bollinger Bands and MACD-V become zero, yet no value may be NaN or Inf,
// and MACD-V of a flat market is 0.
func TestSeriesFlatMarketIsFinite(t *testing.T) {
	specs := []Spec{SMA(3), EMA(3), RSI(3), ATR(3), BBands(3, 2), MACD(2, 4, 2), MACDV(2, 4, 2)}
	s, err := NewSeries(specs)
	if err != nil {
		t.Fatalf("NewSeries: %v", err)
	}
	for i := range 3100 {
		price := 0.1
		if i >= 100 {
			price = 1e-8
		}
		values, err := s.Apply(Candle{Start: int64(i) * 60, Open: price, High: price, Low: price, Close: price}, true)
		if err != nil {
			t.Fatalf("Apply bar %d: %v", i, err)
		}
		for _, v := range values {
			f := v.Fields
			for _, x := range []float64{f.Value, f.MACD, f.Signal, f.Hist, f.Upper, f.Middle, f.Lower} {
				if math.IsNaN(x) || math.IsInf(x, 0) {
					t.Fatalf("bar %d %s: non-finite fields %+v", i, v.Name, f)
				}
			}
			if v.Kind == KindMACDV && !v.Warming && (i < 100 || i == 3099) && f != (Fields{}) {
				t.Fatalf("bar %d %s: flat market gives %+v, want zeros", i, v.Name, f)
			}
		}
	}
}

func TestSeriesApplyDoesNotAllocate(t *testing.T) {
	candles := btcCandles(t)
	s, err := NewSeries(testSpecs)
	if err != nil {
		t.Fatalf("NewSeries: %v", err)
	}
	if _, err := s.Rebuild(candles[:1100]); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	next := 1100
	closedAllocs := testing.AllocsPerRun(200, func() {
		if _, err := s.Apply(candles[next], true); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		next++
	})
	partial := candles[next]
	inProgressAllocs := testing.AllocsPerRun(200, func() {
		partial.Close += 0.01
		if _, err := s.Apply(partial, false); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	})
	if closedAllocs != 0 || inProgressAllocs != 0 {
		t.Fatalf("allocations per Apply: closed %v, in progress %v; want 0", closedAllocs, inProgressAllocs)
	}
}

// TestSeriesCorrectionMatchesRebuild corrects every correctable bar of a
// Series whose rings have wrapped, one at a time, and checks the replayed
// values and the values of the next bar against a Rebuild over the
// corrected candles: a correction replays from the checkpoint at or before
// its bar, whatever its distance to that checkpoint.
func TestSeriesCorrectionMatchesRebuild(t *testing.T) {
	candles := btcCandles(t)[:300]
	specs := []Spec{SMA(7), EMA(5), RSI(3), ATR(4), BBands(9, 2), MACD(3, 6, 2), MACDV(3, 6, 2)}
	const depth = 40
	tests := []struct {
		name string
		fed  int // closed bars fed before the correction
	}{
		{"rings filling", 30},
		{"rings wrapped", 250},
		{"rings wrapped off a checkpoint", 250 + checkpointEvery/2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for back := 0; back < min(depth, tt.fed); back++ {
				s, err := NewSeries(specs, WithReplayDepth(depth))
				if err != nil {
					t.Fatalf("NewSeries: %v", err)
				}
				if _, err := s.Rebuild(candles[:tt.fed]); err != nil {
					t.Fatalf("Rebuild: %v", err)
				}
				k := tt.fed - 1 - back
				corrected := slices.Clone(candles[:tt.fed+1])
				corrected[k].Close *= 0.98
				corrected[k].Low = min(corrected[k].Low, corrected[k].Close)
				reference, err := NewSeries(specs, WithReplayDepth(depth))
				if err != nil {
					t.Fatalf("NewSeries: %v", err)
				}
				want, err := reference.Rebuild(corrected)
				if err != nil {
					t.Fatalf("Rebuild: %v", err)
				}
				width := len(specs)
				got, err := s.Apply(corrected[k], true)
				if err != nil {
					t.Fatalf("correcting bar %d: %v", k, err)
				}
				if !slices.Equal(got, want[k*width:tt.fed*width]) {
					t.Fatalf("correcting bar %d (%d back): replayed values differ from a rebuild", k, back)
				}
				next, err := s.Apply(corrected[tt.fed], true)
				if err != nil {
					t.Fatalf("bar %d after correcting bar %d: %v", tt.fed, k, err)
				}
				if !slices.Equal(next, want[tt.fed*width:]) {
					t.Fatalf("bar %d after correcting bar %d: values differ from a rebuild", tt.fed, k)
				}
			}
		})
	}
}

// TestSeriesMemoryGrowsWithBars checks that a Series holds memory for the
// bars it has seen, up to its replay depth plus window, not for the whole
// depth from the start.
func TestSeriesMemoryGrowsWithBars(t *testing.T) {
	candles := btcCandles(t)[:1300]
	specs := []Spec{EMA(20), RSI(14), MACD(12, 26, 9), ATR(14), BBands(20, 2)}
	tests := []struct {
		bars     int
		maxBars  int // capacity of the bar ring
		maxSlots int // checkpoints held
	}{
		{0, 0, 0},
		{10, 16, 1},
		{100, 200, 7},
		{1300, DefaultReplayDepth + 19 + checkpointEvery, (DefaultReplayDepth+19+checkpointEvery)/checkpointEvery + 2},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.bars), func(t *testing.T) {
			s, err := NewSeries(specs)
			if err != nil {
				t.Fatalf("NewSeries: %v", err)
			}
			for i, c := range candles[:tt.bars] {
				if _, err := s.Apply(c, true); err != nil {
					t.Fatalf("Apply bar %d: %v", i, err)
				}
			}
			if got := cap(s.past.bars); got > tt.maxBars {
				t.Errorf("bar ring holds %d bars after %d, want at most %d", got, tt.bars, tt.maxBars)
			}
			if got := cap(s.checkpoints) / len(s.state); got > tt.maxSlots {
				t.Errorf("%d checkpoints after %d bars, want at most %d", got, tt.bars, tt.maxSlots)
			}
		})
	}
}
