package daemon_test

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

// sharedFile finds ../shared/<rel> above the working directory (the repo
// has shared/ beside it).
func sharedFile(t *testing.T, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		path := filepath.Join(dir, "shared", rel)
		if _, err := os.Stat(path); err == nil {
			return path
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("shared/%s not found above the working directory", rel)
		}
		dir = parent
	}
}

// ohlcv is a bar as the test computes it, independently of the feed.
type ohlcv struct {
	start                          int64
	open, high, low, close, volume float64
}

// readCSV parses the reference file with nothing but encoding/csv.
func readCSV(t *testing.T, path string) []ohlcv {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var out []ohlcv
	for _, r := range recs[1:] {
		var v [6]float64
		for i := range v {
			if v[i], err = strconv.ParseFloat(r[i], 64); err != nil {
				t.Fatal(err)
			}
		}
		out = append(out, ohlcv{int64(v[0]), v[1], v[2], v[3], v[4], v[5]})
	}
	return out
}

// bucket aggregates hourly rows into buckets of step seconds.
func bucket(rows []ohlcv, step int64) []ohlcv {
	var out []ohlcv
	for _, r := range rows {
		start := r.start - r.start%step
		if n := len(out); n > 0 && out[n-1].start == start {
			b := &out[n-1]
			b.high = max(b.high, r.high)
			b.low = min(b.low, r.low)
			b.close = r.close
			b.volume += r.volume
			continue
		}
		out = append(out, ohlcv{start, r.open, r.high, r.low, r.close, r.volume})
	}
	return out
}

func TestReplayPublishesTheFileAndItsAggregates(t *testing.T) {
	path := sharedFile(t, "data/btcusd_1h.csv")
	rows := readCSV(t, path)
	s := newStack(t, 0)
	startFeed(t, s, map[string]string{
		"VIGIL_FEED_SOURCE":           "replay",
		"VIGIL_REPLAY_FILE":           path,
		"VIGIL_REPLAY_SPEED":          "0",
		"VIGIL_FEED_CANDLE_RETENTION": "5000",
	})
	user := contract.DesiredState{User: "rita", UserID: 3, ExchangeID: 1, Mode: contract.ModePositionMonitor, Symbols: []string{"BTC-USD"}}
	begin := time.Now()
	s.putState(t, user)
	series := contract.SeriesID{User: "rita", UserID: 3, ExchangeID: 1, Symbol: "BTC-USD"}
	last := rows[len(rows)-1].start
	testenv.WaitFor(t, 30*time.Second, "the whole file in the 1h, 4h and 1d series", func() bool {
		if n, err := s.rdb.ZCard(t.Context(), contract.CandleKey(with(series, contract.TF1h))).Result(); err != nil || n != int64(len(rows)) {
			return false
		}
		for _, tf := range []contract.Timeframe{contract.TF1h, contract.TF4h, contract.TF1d} {
			c, ok, err := s.store.LastCandle(t.Context(), with(series, tf))
			if err != nil || !ok || c.Start != last-last%int64(tf.Duration()/time.Second) {
				return false
			}
		}
		return true
	})
	elapsed := time.Since(begin)
	// Every row goes out on JetStream exactly once, closed: never first as
	// an in-progress bar, never a second time.
	subject := contract.CandleSubject(with(series, contract.TF1h))
	var sent []contract.Candle
	testenv.WaitFor(t, 30*time.Second, "every row published closed", func() bool {
		sent = published(t, s.js, subject)
		closed := 0
		for _, c := range sent {
			if c.Closed {
				closed++
			}
		}
		return closed >= len(rows)
	})
	perStart := map[int64]int{}
	for _, c := range sent {
		perStart[c.Start]++
		if !c.Closed {
			t.Errorf("row %d published in progress (version %d)", c.Start, c.Version)
		}
	}
	for _, r := range rows {
		if n := perStart[r.start]; n != 1 {
			t.Errorf("row %d published %d times, want once", r.start, n)
		}
	}
	if len(sent) != len(rows) {
		t.Errorf("%d 1h candles published for %d rows", len(sent), len(rows))
	}
	stored := 0
	for _, tf := range []contract.Timeframe{contract.TF1h, contract.TF4h, contract.TF1d} {
		n, err := s.rdb.ZCard(t.Context(), contract.CandleKey(with(series, tf))).Result()
		if err != nil {
			t.Fatal(err)
		}
		stored += int(n)
	}
	for _, st := range s.statuses(t, 1) {
		if st.Engine.Malformed != 0 {
			t.Errorf("%d malformed items in a clean file", st.Engine.Malformed)
		}
		var src struct {
			Played   int  `json:"played"`
			Finished bool `json:"finished"`
		}
		if err := json.Unmarshal(st.SourceStatus, &src); err != nil || !src.Finished || src.Played != len(rows) {
			t.Errorf("replay status %s: want finished with %d rows played", st.SourceStatus, len(rows))
		}
	}
	t.Logf("replay: %d bars stored in %v (%.0f candles/s, from the first desired state to the last bar stored)",
		stored, elapsed.Round(time.Millisecond), float64(stored)/elapsed.Seconds())

	for _, tc := range []struct {
		tf   contract.Timeframe
		want []ohlcv
	}{
		{contract.TF1h, rows},
		{contract.TF4h, bucket(rows, 4*3600)},
		{contract.TF1d, bucket(rows, 86400)},
	} {
		t.Run(string(tc.tf), func(t *testing.T) {
			got := s.series(t, with(series, tc.tf))
			if len(got) != len(tc.want) {
				t.Fatalf("%d bars stored, want %d", len(got), len(tc.want))
			}
			for i, w := range tc.want {
				g := got[i]
				if g.Start != w.start || g.Open != w.open || g.High != w.high || g.Low != w.low || g.Close != w.close || !sameVolume(g.Volume, w.volume) {
					t.Fatalf("bar %d: stored %d %v/%v/%v/%v/%v, want %d %v/%v/%v/%v/%v", i,
						g.Start, g.Open, g.High, g.Low, g.Close, g.Volume, w.start, w.open, w.high, w.low, w.close, w.volume)
				}
				// A bucket is closed once the replay clock (the end of the
				// last row) has passed its end.
				wantClosed := w.start+int64(tc.tf.Duration()/time.Second) <= last+3600
				if g.Closed != wantClosed {
					t.Errorf("bar %d (%d): closed %v, want %v", i, g.Start, g.Closed, wantClosed)
				}
			}
		})
	}
	for _, tf := range []contract.Timeframe{contract.TF1m, contract.TF5m, contract.TF15m} {
		if got := s.series(t, with(series, tf)); len(got) != 0 {
			t.Errorf("%s: %d bars stored; hourly rows cannot make them", tf, len(got))
		}
	}
}

// published reads every candle published on subject from VIGIL_CANDLES
// (which stores it under its partition, natsx.StoredFilter), in stream
// order.
func published(t *testing.T, js jetstream.JetStream, subject string) []contract.Candle {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	filter := natsx.StoredFilter(contract.StreamCandles, subject)
	cons, err := js.OrderedConsumer(ctx, contract.StreamCandles, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		t.Fatal(err)
	}
	// An ordered consumer lives until its inactivity threshold; the
	// caller polls, so delete each one when done.
	defer func() {
		if info := cons.CachedInfo(); info != nil {
			_ = js.DeleteConsumer(context.Background(), contract.StreamCandles, info.Name)
		}
	}()
	var out []contract.Candle
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == 0 {
			return out
		}
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			var c contract.Candle
			if err := json.Unmarshal(m.Data(), &c); err != nil {
				t.Fatalf("%s: %v", m.Subject(), err)
			}
			out = append(out, c)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			t.Fatal(err)
		}
	}
}
