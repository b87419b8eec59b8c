package coinbase

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The fuzz targets of the decoders. `go test` runs their seeds (the
// recorded frames and testdata/fuzz/<Target>) as regular tests; `make fuzz`
// explores further.

// recordedDir holds a copy of shared/data/coinbase-real (frames and REST
// bodies recorded from Coinbase, provenance in its SOURCES.md), kept here
// so the fuzz build does not need pkg/testenv and its servers.
const recordedDir = "testdata/recorded"

// addRecorded adds every recorded frame or REST body whose file name keep
// accepts as a seed.
func addRecorded(f *testing.F, keep func(name string) bool, add func(data []byte)) {
	dir := recordedDir
	entries, err := os.ReadDir(dir)
	if err != nil {
		f.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") || !keep(e.Name()) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			f.Fatal(err)
		}
		add(data)
		n++
	}
	if n == 0 {
		f.Fatalf("no recorded seeds in %s", dir)
	}
}

// FuzzDecodeFrame decodes any WebSocket frame: an error wraps
// ErrMalformedFrame or ErrUnknownChannel; a decoded frame holds only valid
// products, sides and finite non-negative, consistent prices.
func FuzzDecodeFrame(f *testing.F) {
	addRecorded(f, func(name string) bool { return !strings.HasPrefix(name, "rest-") }, func(data []byte) { f.Add(data) })
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := decodeFrame(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedFrame) && !errors.Is(err, ErrUnknownChannel) {
				t.Fatalf("error %v wraps neither ErrMalformedFrame nor ErrUnknownChannel", err)
			}
			return
		}
		for _, ev := range fr.events {
			checkDecodedEvent(t, ev)
		}
	})
}

// checkDecodedEvent asserts what a decoded event promises.
func checkDecodedEvent(t *testing.T, ev Event) {
	t.Helper()
	switch e := ev.(type) {
	case *CandlesEvent:
		for _, c := range e.Candles {
			checkDecodedCandle(t, c, c.Product)
		}
	case *Level2Event:
		checkDecodedProduct(t, e.Product)
		for _, u := range e.Updates {
			if (u.Side != SideBid && u.Side != SideOffer) || !plausibleNumber(u.Price) || !plausibleNumber(u.Quantity) || u.EventTime.IsZero() {
				t.Fatalf("level2 update %+v", u)
			}
		}
	case *TradesEvent:
		for _, tr := range e.Trades {
			checkDecodedProduct(t, tr.Product)
			if !plausibleNumber(tr.Price) || !plausibleNumber(tr.Size) || tr.Time.IsZero() {
				t.Fatalf("trade %+v", tr)
			}
		}
	case *HeartbeatEvent, *SubscriptionsEvent, *ErrorEvent:
	default:
		t.Fatalf("unexpected event %T", ev)
	}
}

// FuzzDecodeCandlesResponse decodes any REST candles body: an error wraps
// ErrMalformedResponse; decoded candles are of the product asked for and
// consistent.
func FuzzDecodeCandlesResponse(f *testing.F) {
	addRecorded(f, func(name string) bool { return strings.HasPrefix(name, "rest-") }, func(data []byte) { f.Add("BTC-USD", data) })
	f.Add("ETH-USD", []byte(`{"candles":[{"start":"1700000000","low":"1","high":"3","open":"2","close":"2","volume":"0"}]}`))
	f.Add("BTC-USD", []byte(`{"candles":[{"start":"1700000000","low":"0x1p1","high":"3","open":"2","close":"2","volume":"1e3"}]}`))
	f.Fuzz(func(t *testing.T, product string, body []byte) {
		if ValidateProduct(product) != nil {
			return
		}
		candles, err := decodeCandlesResponse(product, body)
		if err != nil {
			if !errors.Is(err, ErrMalformedResponse) {
				t.Fatalf("error %v does not wrap ErrMalformedResponse", err)
			}
			return
		}
		for _, c := range candles {
			checkDecodedCandle(t, c, product)
		}
	})
}

// checkDecodedCandle asserts a decoded candle: its product, finite non-negative
// prices with low ≤ open, close ≤ high.
func checkDecodedCandle(t *testing.T, c Candle, product string) {
	t.Helper()
	checkDecodedProduct(t, c.Product)
	if c.Product != product {
		t.Fatalf("candle of %q, want %q", c.Product, product)
	}
	for _, v := range []float64{c.Open, c.High, c.Low, c.Close, c.Volume} {
		if !plausibleNumber(v) {
			t.Fatalf("candle %+v has %v", c, v)
		}
	}
	if c.Low > c.High || c.Open < c.Low || c.Open > c.High || c.Close < c.Low || c.Close > c.High {
		t.Fatalf("inconsistent candle %+v", c)
	}
}

func checkDecodedProduct(t *testing.T, product string) {
	t.Helper()
	if err := ValidateProduct(product); err != nil {
		t.Fatalf("decoded product %q: %v", product, err)
	}
}

func plausibleNumber(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) && v >= 0 }
