package candlewriter_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/candlewriter"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// counts is an Observer that counts.
type counts struct {
	mu                                sync.Mutex
	written, malformed, publishFailed int
}

func (c *counts) Written(_ context.Context, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.written += n
}

func (c *counts) Malformed(context.Context, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.malformed++
}

func (c *counts) PublishFailed(_ context.Context, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.publishFailed += n
}

// setup returns a store on a fresh Redis database and a JetStream on a
// fresh NATS server, with the contract's streams unless bare.
func setup(t *testing.T, bare bool) (*redisstore.Store, jetstream.JetStream) {
	t.Helper()
	rdb, err := redisstore.NewClient(context.Background(), testenv.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	_, js := testenv.Connect(t, testenv.StartNATS(t).URL())
	if !bare {
		if err := natsx.EnsureStreams(context.Background(), js); err != nil {
			t.Fatal(err)
		}
	}
	return redisstore.New(rdb, 5000), js
}

func candle(symbol string, start, version int64, close float64) contract.Candle {
	return contract.Candle{SeriesID: contract.SeriesID{User: "alice", UserID: 1, ExchangeID: 2, Symbol: symbol, Timeframe: contract.TF1m},
		Start: start, Open: close, High: close + 1, Low: close - 1, Close: close, Volume: 1, Version: version}
}

// published reads every message of VIGIL_CANDLES in stream order.
func published(t *testing.T, js jetstream.JetStream) []contract.Candle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, contract.StreamCandles)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []contract.Candle
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var c contract.Candle
		if err := json.Unmarshal(m.Data, &c); err != nil {
			t.Fatal(err)
		}
		if subject, _ := natsx.Published(m.Subject); subject != contract.CandleSubject(c.SeriesID) || m.Header.Get(jetstream.MsgIDHeader) != c.MsgID() {
			t.Fatalf("message %d: subject %s, id %s for %+v", seq, m.Subject, m.Header.Get(jetstream.MsgIDHeader), c)
		}
		out = append(out, c)
	}
	return out
}

// TestWriteStoresAndPublishesTheKeptVersions writes more than two batches
// with older versions and an invalid candle among them: exactly the
// versions Redis kept are published, in order, and counted.
func TestWriteStoresAndPublishesTheKeptVersions(t *testing.T) {
	store, js := setup(t, false)
	obs := &counts{}
	w := candlewriter.New(store, js, quiet, obs)
	ctx := context.Background()
	if _, err := w.Write(ctx, []contract.Candle{candle("ETH-USD", 60, 5, 10)}); err != nil {
		t.Fatal(err)
	}
	var in []contract.Candle
	var want []bool
	for i := range 2*candlewriter.Batch + 100 {
		in = append(in, candle("BTC-USD", int64(60*(i+1)), 1, float64(100+i)))
		want = append(want, true)
	}
	bad := candle("BTC-USD", 60, 2, 1)
	bad.High = -5
	in = append(in, candle("ETH-USD", 60, 4, 11), bad, candle("ETH-USD", 60, 6, 12))
	want = append(want, false, false, true)

	written, err := w.Write(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(written, want) {
		t.Fatalf("written flags differ: %d of %d true, want %d", count(written), len(written), count(want))
	}
	var wantPublished []contract.Candle
	wantPublished = append(wantPublished, candle("ETH-USD", 60, 5, 10))
	for i, c := range in {
		if want[i] {
			wantPublished = append(wantPublished, c)
		}
	}
	got := published(t, js)
	if !slices.Equal(got, wantPublished) {
		t.Fatalf("published %d candles, want %d in order (first difference at %d)", len(got), len(wantPublished), firstDiff(got, wantPublished))
	}
	stored, err := store.Candles(ctx, in[0].SeriesID, 0, 0)
	if err != nil || len(stored) != 2*candlewriter.Batch+100 {
		t.Fatalf("Redis holds %d BTC-USD candles (%v), want %d", len(stored), err, 2*candlewriter.Batch+100)
	}
	if eth, _, _ := store.LastCandle(ctx, in[len(in)-1].SeriesID); eth.Version != 6 {
		t.Fatalf("ETH-USD bar is version %d, want 6", eth.Version)
	}
	if obs.written != len(wantPublished) || obs.malformed != 1 || obs.publishFailed != 0 {
		t.Fatalf("observed written %d malformed %d publish failures %d, want %d 1 0", obs.written, obs.malformed, obs.publishFailed, len(wantPublished))
	}
}

// TestWriteKeepsRedisWhenPublishFails has no stream to publish to: every
// candle is stored and the write reports ErrPublish for all of them.
func TestWriteKeepsRedisWhenPublishFails(t *testing.T) {
	store, js := setup(t, true)
	obs := &counts{}
	w := candlewriter.New(store, js, quiet, obs)
	ctx := context.Background()
	in := []contract.Candle{candle("BTC-USD", 60, 1, 10), candle("BTC-USD", 120, 1, 11)}
	written, err := w.Write(ctx, in)
	if !errors.Is(err, candlewriter.ErrPublish) {
		t.Fatalf("err = %v, want ErrPublish", err)
	}
	if !slices.Equal(written, []bool{true, true}) {
		t.Fatalf("written = %v, want both", written)
	}
	if stored, _ := store.Candles(ctx, in[0].SeriesID, 0, 0); len(stored) != 2 {
		t.Fatalf("Redis holds %d candles, want 2", len(stored))
	}
	if obs.publishFailed != 2 {
		t.Fatalf("publish failures counted %d, want 2", obs.publishFailed)
	}
}

// TestWriteStopsWhenRedisFails closes Redis: ErrStore, nothing published.
func TestWriteStopsWhenRedisFails(t *testing.T) {
	store, js := setup(t, false)
	_ = store.Client().Close()
	w := candlewriter.New(store, js, quiet, nil)
	written, err := w.Write(context.Background(), []contract.Candle{candle("BTC-USD", 60, 1, 10)})
	if !errors.Is(err, candlewriter.ErrStore) || written[0] {
		t.Fatalf("written %v err %v, want nothing written and ErrStore", written, err)
	}
	if got := published(t, js); len(got) != 0 {
		t.Fatalf("published %d candles after a Redis failure", len(got))
	}
}

func count(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

func firstDiff(a, b []contract.Candle) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
