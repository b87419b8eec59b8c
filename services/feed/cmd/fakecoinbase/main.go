// Command fakecoinbase serves the feed's fake Coinbase Advanced Trade
// (package fakecoinbase) on loopback ports, for end-to-end tests that run
// vigil-feed as a process with VIGIL_FEED_SOURCE=coinbase.
//
// It generates -history of candles before now for every product and
// granularity, prints {"rest":..,"ws":..,"admin":..} as its first line on
// stdout, and runs until SIGTERM or SIGINT. The admin server answers
// GET /requests with every REST request the fake received (time, path,
// query, status), so a test can check the client's request rate.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"vigil.dev/services/feed/internal/fakecoinbase"
)

// granularities are the REST granularities the fake fills, with their bucket lengths.
var granularities = map[string]time.Duration{
	"ONE_MINUTE": time.Minute, "FIVE_MINUTE": 5 * time.Minute, "FIFTEEN_MINUTE": 15 * time.Minute,
	"THIRTY_MINUTE": 30 * time.Minute, "ONE_HOUR": time.Hour, "TWO_HOUR": 2 * time.Hour,
	"FOUR_HOUR": 4 * time.Hour, "SIX_HOUR": 6 * time.Hour, "ONE_DAY": 24 * time.Hour,
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "fakecoinbase:", err)
		os.Exit(1)
	}
}

func run() error {
	products := flag.String("products", "BTC-USD", "products, comma separated")
	history := flag.Duration("history", 7*24*time.Hour, "candles of every granularity from this long before now up to the current bucket")
	heartbeat := flag.Duration("heartbeat", fakecoinbase.DefaultHeartbeatInterval, "WebSocket heartbeat interval")
	flag.Parse()
	if *history <= 0 {
		return errors.New("-history must be positive")
	}

	fake := fakecoinbase.NewServer(fakecoinbase.WithHeartbeatInterval(*heartbeat))
	defer fake.Close()
	now := time.Now().UTC()
	for _, p := range strings.Split(*products, ",") {
		for g, d := range granularities {
			from := now.Add(-*history).Truncate(d)
			n := int(now.Truncate(d).Sub(from)/d) + 1
			if _, err := fake.GenerateCandles(p, g, from, n); err != nil {
				return fmt.Errorf("product %q: %w", p, err)
			}
		}
	}

	admin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /requests", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(fake.Requests()) // the client may have gone
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(admin) }() // ends with Shutdown below

	line, err := json.Marshal(map[string]string{"rest": fake.URL, "ws": fake.WebSocketURL, "admin": "http://" + admin.Addr().String()})
	if err != nil {
		return err
	}
	fmt.Println(string(line))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}
