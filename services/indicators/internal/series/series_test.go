package series

import (
	"errors"
	"slices"
	"strconv"
	"testing"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/indicators/internal/ta"
)

var testID = contract.SeriesID{User: "u", UserID: 1, ExchangeID: 1, Symbol: "BTC-USD", Timeframe: contract.TF1h}

// candle is a bar of testID starting at hour h with close c, version v.
func candle(h int64, c float64, closed bool, v int64) contract.Candle {
	return contract.Candle{SeriesID: testID, Start: h * 3600, Open: c, High: c + 1, Low: c - 1, Close: c, Volume: 1, Closed: closed, Version: v}
}

func TestSeriesApply(t *testing.T) {
	// Bars 1-5 closed with versions 10..50 precede each case.
	type want struct {
		updates  []int64 // version of each update, in order
		closed   []bool
		rebuild  bool
		errIsBad bool
	}
	tests := []struct {
		name  string
		feed  []contract.Candle // after the five bars; the last one is checked
		check want
	}{
		{"next closed bar", []contract.Candle{candle(6, 106, true, 60)}, want{updates: []int64{60}, closed: []bool{true}}},
		{"in-progress bar", []contract.Candle{candle(6, 106, false, 55)}, want{updates: []int64{55}, closed: []bool{false}}},
		{"newer in-progress", []contract.Candle{candle(6, 106, false, 55), candle(6, 107, false, 56)}, want{updates: []int64{56}, closed: []bool{false}}},
		{"stale in-progress version", []contract.Candle{candle(6, 106, false, 56), candle(6, 107, false, 55)}, want{}},
		{"in-progress of a closed bar", []contract.Candle{candle(5, 106, false, 99)}, want{}},
		{"older in-progress bar", []contract.Candle{candle(7, 106, false, 70), candle(6, 107, false, 71)}, want{}},
		{"closed older than its in-progress", []contract.Candle{candle(6, 106, false, 60), candle(6, 107, true, 59)}, want{}},
		{"closed after in-progress", []contract.Candle{candle(6, 106, false, 60), candle(6, 107, true, 65)}, want{updates: []int64{65}, closed: []bool{true}}},
		{"redelivered closed bar", []contract.Candle{candle(5, 105, true, 50)}, want{}},
		{"correction of the last bar", []contract.Candle{candle(5, 99, true, 51)}, want{updates: []int64{51}, closed: []bool{true}}},
		{"correction replays later bars", []contract.Candle{candle(3, 99, true, 70)}, want{updates: []int64{70, 70, 70}, closed: []bool{true, true, true}}},
		{"correction with the same numbers", []contract.Candle{candle(3, 103, true, 70)}, want{}},
		{"older correction version", []contract.Candle{candle(3, 99, true, 29)}, want{}},
		{"correction of an unknown bar", []contract.Candle{candle(0, 99, true, 70)}, want{rebuild: true}},
		{"closed bar behind the in-progress one", []contract.Candle{candle(7, 106, false, 70), candle(6, 107, true, 71)}, want{rebuild: true}},
		{"zero price", []contract.Candle{{SeriesID: testID, Start: 6 * 3600, Closed: true, Version: 60}}, want{errIsBad: true}},
		// After a correction with a high version, the in-progress bar's
		// values carry it, and the closed values still replace them.
		{"closed after in-progress under a high dep", []contract.Candle{candle(5, 99, true, 1000), candle(6, 106, false, 60), candle(6, 107, true, 65)},
			want{updates: []int64{1001}, closed: []bool{true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := newSeries(testID, []ta.Spec{ta.SMA(2), ta.EMA(3)})
			if err != nil {
				t.Fatal(err)
			}
			for h := int64(1); h <= 5; h++ {
				if _, rebuild, err := s.apply(candle(h, float64(100+h), true, h*10)); err != nil || rebuild {
					t.Fatal(err, rebuild)
				}
			}
			var ups []contract.IndicatorUpdate
			var rebuild bool
			for _, c := range tt.feed {
				ups, rebuild, err = s.apply(c)
			}
			if tt.check.errIsBad != errors.Is(err, ta.ErrInvalidCandle) || (err != nil && !tt.check.errIsBad) {
				t.Fatalf("err %v", err)
			}
			if rebuild != tt.check.rebuild {
				t.Fatalf("rebuild %v, want %v", rebuild, tt.check.rebuild)
			}
			var versions []int64
			var closed []bool
			for _, u := range ups {
				versions, closed = append(versions, u.Version), append(closed, u.Closed)
				for name, f := range u.Values {
					if len(f) != 1 {
						t.Fatalf("%s fields %v", name, f)
					}
				}
			}
			if !slices.Equal(versions, tt.check.updates) || !slices.Equal(closed, tt.check.closed) {
				t.Fatalf("updates with versions %v closed %v, want %v %v", versions, closed, tt.check.updates, tt.check.closed)
			}
		})
	}
}

func TestSeriesRebuild(t *testing.T) {
	s, err := newSeries(testID, []ta.Spec{ta.SMA(2)})
	if err != nil {
		t.Fatal(err)
	}
	stored := []contract.Candle{
		candle(1, 101, true, 10),
		candle(2, 102, false, 25), // the feed missed its close: a later bar exists
		{SeriesID: testID, Start: 3 * 3600, Closed: true, Version: 30}, // zero prices: skipped
		candle(4, 104, true, 20),
		candle(5, 105, false, 55), // in progress
	}
	ups, skipped := s.rebuild(stored)
	if skipped != 1 {
		t.Fatalf("skipped %d, want 1", skipped)
	}
	type got struct {
		start, version int64
		closed         bool
		sma            float64
	}
	var have []got
	for _, u := range ups {
		have = append(have, got{u.Start, u.Version, u.Closed, u.Values["sma_2"]["value"]})
	}
	want := []got{{3600, 10, true, 0}, {7200, 25, true, 101.5}, {4 * 3600, 25, true, 103}, {5 * 3600, 55, false, 104.5}}
	if !slices.Equal(have, want) {
		t.Fatalf("rebuilt %+v, want %+v", have, want)
	}
	if len(ups[0].Warming) != 1 {
		t.Fatalf("first bar must be warming: %+v", ups[0])
	}
	// The rebuilt state continues: bar 5 closes.
	next, rebuild, err := s.apply(candle(5, 107, true, 60))
	if err != nil || rebuild || len(next) != 1 || next[0].Values["sma_2"]["value"] != 105.5 || next[0].Version != 60 {
		t.Fatalf("after rebuild: %+v %v %v", next, rebuild, err)
	}
}

// TestSeriesKeepsReplayDepthBars feeds bars and checks that a series keeps
// between replayDepth and replayDepth+closedSlack closed bars in storage
// that never grows beyond that, and corrects exactly the last replayDepth
// bars in place (an older correction rebuilds).
func TestSeriesKeepsReplayDepthBars(t *testing.T) {
	const limit = replayDepth + closedSlack
	for _, bars := range []int{10, replayDepth, limit, limit + 1, 3*replayDepth + 7} {
		t.Run(strconv.Itoa(bars), func(t *testing.T) {
			s, err := newSeries(testID, []ta.Spec{ta.SMA(2)})
			if err != nil {
				t.Fatal(err)
			}
			for h := int64(1); h <= int64(bars); h++ {
				if _, rebuild, err := s.apply(candle(h, float64(100+h%50), true, h*10)); err != nil || rebuild {
					t.Fatalf("bar %d: %v %v", h, err, rebuild)
				}
			}
			if n := len(s.closed); n < min(bars, replayDepth) || n > limit || cap(s.closed) > limit {
				t.Fatalf("%d closed bars kept in storage for %d, want %d to %d", n, cap(s.closed), min(bars, replayDepth), limit)
			}
			if last, _ := s.lastClosed(); last.start != int64(bars)*3600 || s.lastDep() != int64(bars)*10 {
				t.Fatalf("last closed bar %+v, dep %d", last, s.lastDep())
			}
			oldest := int64(max(1, bars-replayDepth+1))
			const version = 1_000_000
			ups, rebuild, err := s.apply(candle(oldest, 99, true, version))
			if err != nil || rebuild || len(ups) != bars-int(oldest)+1 {
				t.Fatalf("correcting the oldest correctable bar: %d updates, rebuild %v, %v", len(ups), rebuild, err)
			}
			for _, u := range ups {
				if u.Version != version {
					t.Fatalf("update of %d after the correction has version %d, want %d", u.Start, u.Version, version)
				}
			}
			if oldest > 1 {
				if _, rebuild, err := s.apply(candle(oldest-1, 99, true, version)); err != nil || !rebuild {
					t.Fatalf("correcting a bar beyond the replay depth: rebuild %v, %v", rebuild, err)
				}
			}
		})
	}
}
