package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/indicators/internal/daemon"
)

// throughputSymbols is the symbols of each benchmark user: with the three
// position-monitor timeframes, 150 series per user.
const throughputSymbols = 50

// BenchmarkCandleThroughput measures how many closed candles per second
// one vigil-indicators instance turns into stored and published indicator
// updates, against real NATS and Redis. The benchmark plays the feed as
// vigil-feed's writer does (Redis pipelines of 500, then asynchronous
// publishes acked per 500), one closed bar of every series after the
// other, and the time runs until the update of the last candle is seen.
func BenchmarkCandleThroughput(b *testing.B) {
	for _, users := range []int{2, 20} {
		b.Run(fmt.Sprintf("series=%d", users*throughputSymbols*len(contract.ModePositionMonitor.Timeframes())), func(b *testing.B) {
			benchmarkThroughput(b, users)
		})
	}
}

func benchmarkThroughput(b *testing.B, users int) {
	ctx := context.Background()
	srv := testenv.StartNATS(b)
	redisURL := testenv.Redis(b)
	nc, js := testenv.Connect(b, srv.URL())
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		b.Fatal(err)
	}
	rdb, err := redisstore.NewClient(ctx, redisURL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rdb.Close() })
	store := redisstore.New(rdb, 1000)

	var updated atomic.Int64
	sub, err := nc.Subscribe(contract.IndicatorSubjects, func(*nats.Msg) { updated.Add(1) })
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sub.Unsubscribe() })

	serveCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- daemon.Serve(serveCtx, daemon.Config{
			NATS:      config.NATS{URL: srv.URL()},
			Service:   config.Service{Instance: "bench", LogLevel: "warn", ShutdownTimeout: 10 * time.Second},
			Redis:     config.Redis{URL: redisURL},
			Retention: 1000,
		}, io.Discard)
	}()
	b.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})

	var series []contract.SeriesID
	for u := range users {
		st := contract.DesiredState{User: fmt.Sprintf("tp%d", u), UserID: int64(100 + u), ExchangeID: 1,
			Settings: contract.Settings{Mode: contract.ModePositionMonitor, Indicators: contract.IndicatorParams{
				EMA: []int{3, 5}, RSI: 3, MACD: &contract.MACDParams{Fast: 2, Slow: 4, Signal: 2},
				ATR: 3, Bollinger: &contract.BollingerParam{Period: 3, StdDev: 2}}}}
		for s := range throughputSymbols {
			sym := fmt.Sprintf("P%dS%d-USD", u, s)
			st.Symbols = append(st.Symbols, sym)
			for _, tf := range contract.ModePositionMonitor.Timeframes() {
				series = append(series, contract.SeriesID{User: st.User, UserID: st.UserID, ExchangeID: st.ExchangeID, Symbol: sym, Timeframe: tf})
			}
		}
		testenv.PutState(b, js, st)
	}
	testenv.WaitFor(b, 60*time.Second, "the instance to run every series", func() bool {
		sts, err := testenv.Statuses[contract.IndicatorsStatus](nc, contract.SvcIndicators, 1, 2*time.Second)
		if err != nil {
			return false
		}
		for _, st := range sts { // the one instance's
			return st.Series == len(series)
		}
		return false
	})

	candles := make([]contract.Candle, b.N)
	for i := range candles {
		id := series[i%len(series)]
		step := int64(id.Timeframe.Duration() / time.Second)
		start := 1_700_006_400/86400*86400 + int64(i/len(series))*step
		price := 100 + float64(i%7)
		candles[i] = contract.Candle{SeriesID: id, Start: start, Open: price, High: price + 2, Low: price - 2, Close: price + 1,
			Volume: 10, Closed: true, Version: (start + step) * 1_000_000, Source: "bench"}
	}
	before := updated.Load()
	b.ResetTimer()
	for from := 0; from < len(candles); from += 500 {
		feedChunk(b, store, js, candles[from:min(from+500, len(candles))])
	}
	testenv.WaitFor(b, 5*time.Minute, "an update of every candle", func() bool { return updated.Load()-before >= int64(b.N) })
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "candles/s")
}

// feedChunk writes candles to Redis in one pipeline, then publishes them
// asynchronously and waits for every acknowledgement.
func feedChunk(b *testing.B, store *redisstore.Store, js jetstream.JetStream, cs []contract.Candle) {
	ctx := context.Background()
	if _, err := store.WriteCandlesEach(ctx, cs); err != nil {
		b.Fatal(err)
	}
	acks := make([]jetstream.PubAckFuture, len(cs))
	for i, c := range cs {
		data, err := json.Marshal(c)
		if err != nil {
			b.Fatal(err)
		}
		if acks[i], err = js.PublishAsync(contract.CandleSubject(c.SeriesID), data, jetstream.WithMsgID(c.MsgID())); err != nil {
			b.Fatal(err)
		}
	}
	for _, ack := range acks {
		select {
		case <-ack.Ok():
		case err := <-ack.Err():
			b.Fatal(err)
		case <-time.After(10 * time.Second):
			b.Fatal("no acknowledgement of a candle publish in 10s")
		}
	}
}
