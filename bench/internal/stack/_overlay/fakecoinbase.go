// This file is the benchmark runner's fake Coinbase server: the runner
// adds it to the feed module as services/feed/cmd/benchfakecoinbase
// (go build -overlay), where it may use the feed's internal fakecoinbase
// package. It serves REST candles and the market-data WebSocket on a
// loopback port, prints {"rest":"http://...","ws":"ws://..."} as its first
// line on stdout, and runs until SIGTERM or SIGINT.
//
// Flags: -products (comma separated), -minutes (ONE_MINUTE candles up to
// now), -bars (candles of every other granularity).

package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"vigil.dev/services/feed/internal/fakecoinbase"
)

var granularities = map[string]time.Duration{
	"FIVE_MINUTE": 5 * time.Minute, "FIFTEEN_MINUTE": 15 * time.Minute, "THIRTY_MINUTE": 30 * time.Minute,
	"ONE_HOUR": time.Hour, "TWO_HOUR": 2 * time.Hour, "FOUR_HOUR": 4 * time.Hour, "SIX_HOUR": 6 * time.Hour,
	"ONE_DAY": 24 * time.Hour,
}

func main() {
	products := flag.String("products", "BTC-USD", "products, comma separated")
	minutes := flag.Int("minutes", 12000, "ONE_MINUTE candles up to now")
	bars := flag.Int("bars", 400, "candles of every other granularity up to now")
	flag.Parse()
	fake := fakecoinbase.NewServer()
	defer fake.Close()
	now := time.Now().UTC()
	for _, p := range strings.Split(*products, ",") {
		if _, err := fake.GenerateCandles(p, "ONE_MINUTE", now.Truncate(time.Minute).Add(-time.Duration(*minutes)*time.Minute), *minutes); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for g, d := range granularities {
			if _, err := fake.GenerateCandles(p, g, now.Truncate(d).Add(-time.Duration(*bars)*d), *bars); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
	}
	line, _ := json.Marshal(map[string]string{"rest": fake.URL, "ws": fake.WebSocketURL})
	fmt.Println(string(line))
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
