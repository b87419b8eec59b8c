package replay_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/feed/internal/replay"
	"vigil.dev/services/feed/internal/source"
)

const header = "start,open,high,low,close,volume\n"

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name      string
		body      string
		rows      int
		malformed int
		err       bool
	}{
		{"clean", header + "3600,1,2,0.5,1.5,10\n7200,1.5,3,1,2,5\n", 2, 0, false},
		{"bad rows are set aside", header +
			"3600,1,2,0.5,1.5,10\n" +
			"7200,NaN,3,1,2,5\n" + // not finite
			"10800,1,3,-1,2,5\n" + // negative low
			"14400,1,1,2,1,5\n" + // high below low
			"18030,1,2,1,1,5\n" + // not on an hour
			"21600,1,2,1\n" + // too few fields
			"25200,x,2,1,1,5\n" + // not a number
			"28800,1,2,1,1,5\n", 2, 6, false},
		{"wrong header", "time,o,h,l,c,v\n3600,1,2,0.5,1.5,10\n", 0, 0, true},
		{"out of order", header + "7200,1,2,0.5,1.5,10\n3600,1,2,0.5,1.5,10\n", 0, 0, true},
		{"no usable row", header + "3600,1,1,2,1,5\n", 0, 1, true},
		{"empty", "", 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, malformed, err := replay.Parse(strings.NewReader(tc.body), "BTC-USD")
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if len(rows) != tc.rows || len(malformed) != tc.malformed {
				t.Fatalf("%d rows and %d malformed (%v), want %d and %d", len(rows), len(malformed), malformed, tc.rows, tc.malformed)
			}
			for _, m := range malformed {
				if !errors.Is(m, source.ErrMalformed) || !strings.Contains(m.Error(), "line ") {
					t.Errorf("malformed error %q does not wrap ErrMalformed with its line", m)
				}
			}
		})
	}
}

// sink counts what a replay delivers.
type sink struct {
	candles   []source.Bar
	malformed int
	clock     time.Time
	// apart counts candles and clocks handed over separately, and
	// misclocked the hand-overs whose clock is not the bar's end.
	apart, misclocked int
}

func (s *sink) Trade(source.Trade)     {}
func (s *sink) Candle(b source.Bar)    { s.candles = append(s.candles, b); s.apart++ }
func (s *sink) Book(source.BookUpdate) {}
func (s *sink) Clock(now time.Time)    { s.clock = now; s.apart++ }
func (s *sink) Gap(source.Gap)         {}
func (s *sink) Malformed(error)        { s.malformed++ }
func (s *sink) CandleThenClock(b source.Bar, now time.Time) {
	s.candles = append(s.candles, b)
	s.clock = now
	if !now.Equal(b.End()) {
		s.misclocked++
	}
}

func TestReplayPlaysWhileSubscribedAndAggregatesHistory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bars.csv")
	body := header
	first := time.Date(2026, 1, 1, 22, 0, 0, 0, time.UTC)
	for i, row := range []string{"1,2,0.5,1.5,10", "1.5,3,1,2,5", "2,2.5,1.5,2.2,1", "2.2,4,2,3,2", "3,3,2.5,2.6,4", "bad,row,,,"} {
		body += strconv.FormatInt(first.Add(time.Duration(i)*time.Hour).Unix(), 10) + "," + row + "\n"
	}
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	out := &sink{}
	r, err := replay.New(replay.Config{File: path, Symbol: "BTC-USD"}, out)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.History(context.Background(), "BTC-USD", contract.TF1h, time.Unix(0, 0), time.Now()); err != nil || len(got) != 0 {
		t.Fatalf("history before playback = %v, %v; want nothing played", got, err)
	}
	if err := r.Subscribe(source.ChannelBars, "BTC-USD"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	testenv.Eventually(t, 30*time.Second, func() error {
		if now := r.Now(); now.Before(time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)) {
			return fmt.Errorf("replay clock stuck at %v", now)
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(out.candles) != 5 || out.malformed != 1 {
		t.Fatalf("%d candles and %d malformed rows delivered, want 5 and 1", len(out.candles), out.malformed)
	}
	// Each row goes over in one step with the clock at its end, so the
	// feed never sees a played row open.
	if out.apart != 0 || out.misclocked != 0 {
		t.Errorf("%d candles or clocks handed over apart, %d hand-overs with a clock other than the bar's end; want 0 and 0", out.apart, out.misclocked)
	}
	days, err := r.History(context.Background(), "BTC-USD", contract.TF1d, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), r.Now())
	if err != nil {
		t.Fatal(err)
	}
	want := []source.Bar{
		{Product: "BTC-USD", Timeframe: contract.TF1d, Start: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Open: 1, High: 3, Low: 0.5, Close: 2, Volume: 15},
		{Product: "BTC-USD", Timeframe: contract.TF1d, Start: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), Open: 2, High: 4, Low: 1.5, Close: 2.6, Volume: 7},
	}
	if len(days) != 2 || days[0] != want[0] || days[1] != want[1] {
		t.Errorf("1d history = %+v, want %+v", days, want)
	}
	if got, err := r.History(context.Background(), "BTC-USD", contract.TF5m, time.Unix(0, 0), r.Now()); err != nil || len(got) != 0 {
		t.Errorf("5m history = %v, %v; hourly rows make no 5m bars", got, err)
	}
	if _, err := r.History(context.Background(), "ETH-USD", contract.TF1h, time.Unix(0, 0), r.Now()); !errors.Is(err, source.ErrUnknownProduct) {
		t.Errorf("history of another symbol: %v, want ErrUnknownProduct", err)
	}
}
