package daemon_test

import (
	"fmt"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// TestThroughputManyUsers measures candles written per second with 10
// users on 4 shared products and the simulator at one sim hour per wall
// second: each 50 ms flush carries every timeframe's open bar and the bars
// that closed since, for every user of each product.
func TestThroughputManyUsers(t *testing.T) {
	s := newStack(t, 0)
	env := simEnv(time.Now().UTC().Truncate(time.Hour))
	env["VIGIL_SIM_SPEED"] = "3600"
	env["VIGIL_FEED_GAP_FILL_BARS"] = "5"
	startFeed(t, s, env)
	symbols := []string{"BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD"}
	const users = 10
	for i := range users {
		s.putState(t, contract.DesiredState{User: fmt.Sprintf("load%d", i), UserID: int64(100 + i), ExchangeID: 1,
			Mode: contract.ModeScalperMACDV, Symbols: symbols})
	}
	testenv.WaitFor(t, 20*time.Second, "every user running", func() bool {
		v, err := s.tryStatuses(1, time.Second)
		if err != nil {
			return false
		}
		for _, st := range v {
			return len(placement(v)) == users && st.Products["BTC-USD"].Subscribers == users
		}
		return false
	})
	first := engineStats(t, s).Engine.CandlesWritten
	begin := time.Now()
	const want = 5_000
	var last statusView
	testenv.WaitFor(t, 60*time.Second, fmt.Sprintf("%d more candles written", want), func() bool {
		// A loaded machine may answer one status late: ask again.
		v, err := s.tryStatuses(1, 10*time.Second)
		for _, st := range v {
			last = st
		}
		return err == nil && last.Engine.CandlesWritten-first >= want
	})
	elapsed := time.Since(begin)
	n := last.Engine.CandlesWritten - first
	t.Logf("%d candle versions written and published in %v: %.0f candles/s (%d users × %d products × 6 timeframes)",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), users, len(symbols))
	if last.Engine.Malformed != 0 || last.Engine.WriteErrors != 0 {
		t.Errorf("%d malformed items and %d failed writes", last.Engine.Malformed, last.Engine.WriteErrors)
	}
}
