package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/indicators/internal/daemon"
)

// heavyBars is the length of the heavy user's series. Issue 17 names a
// recompute of 18,000 bars; rewriting that many takes tens of seconds
// under -race on a loaded machine, so the test uses fewer unless
// VIGIL_TEST_HEAVY_BARS asks for more. Either way one recompute of it
// lasts far longer than a light command.
func heavyBars(t *testing.T) int {
	if v := os.Getenv("VIGIL_TEST_HEAVY_BARS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 || n > 100_000 {
			t.Fatalf("VIGIL_TEST_HEAVY_BARS=%q: want a number of bars from 1000 to 100000", v)
		}
		return n
	}
	return 4000
}

// Sampling of the light user's commands: each phase takes at least
// phaseSamples of them beside at least one whole recompute of the heavy
// series (its read, compute and write); a phase ends after phaseMax
// (phaseMaxPer4000 per 4,000 heavy bars) whatever it has.
const (
	phaseSamples = 20
	// phaseRounds alternating rounds of the two phases: the p90 of two
	// rounds' ~70 samples moved by 1.6x on a machine loaded by other
	// work; four rounds average it out.
	phaseRounds     = 4
	phaseMaxPer4000 = 40 * time.Second
	// commandTimeout is how long one command of the light user may take.
	commandTimeout = 15 * time.Second
)

// TestNoHeadOfLineBlocking: one user's heavy work never delays another
// user's commands beyond their normal time (ARCHITECTURE.md §5). Bob sends
// a stream of apply requests (the reload-settings step, each with a new
// RSI period, so his 300-bar series is rebuilt) while, in alternating
// phases of the same run, alice's recomputes of her long series run back
// to back either on bob's instance or on a twin: a second instance in
// this process, on a NATS server of its own and a database of its own in
// the same redis-server, with the same series. Both phases put the same
// work on the cores, the garbage collector and redis-server; only the
// first shares bob's instance. Bob's latency beside alice's job on his
// instance must stay within his latency beside her job on the twin plus a
// quarter of one of her recomputes, at the median and the 90th
// percentile: an apply that waited behind a recompute would wait half of
// one on average, so blocking shows far beyond that margin, while the
// noise of a busy machine (p90 of 40 samples: 27 ms on the twin and 41 ms
// on his instance in one CI run, a recompute taking 750 ms) stays inside
// it. The comparison measures blocking inside the instance, not the
// machine or Redis.
func TestNoHeadOfLineBlocking(t *testing.T) {
	h, twin := newHarness(t), newHarness(t)
	bars := heavyBars(t)
	phaseMax := phaseMaxPer4000 * time.Duration(max(1, bars/4000))
	heavy := contract.SeriesID{User: "alice", UserID: 41, ExchangeID: 1, Symbol: "HEAVY-USD", Timeframe: contract.TF1h}
	light := contract.SeriesID{User: "bob", UserID: 42, ExchangeID: 1, Symbol: "LIGHT-USD", Timeframe: contract.TF1h}
	heavyCandles, lightCandles := longCandles(t, heavy, bars), candles(t, light, 300, 1)
	heavyState := contract.DesiredState{User: heavy.User, UserID: heavy.UserID, ExchangeID: heavy.ExchangeID, Mode: contract.ModePositionMonitor, Symbols: []string{heavy.Symbol}}
	var stateB contract.DesiredState
	for _, in := range []*harness{h, twin} {
		cfg := in.config("one")
		cfg.Retention = bars
		in.startConfigured(cfg)
		in.waitMembers(1)
		in.writeCandles(bars, heavyCandles)
		in.putState(heavyState)
		in.waitUpdate(heavy, heavyCandles[bars-1].Start, true)
	}
	h.writeCandles(bars, lightCandles)
	stateB = h.putState(contract.DesiredState{User: light.User, UserID: light.UserID, ExchangeID: light.ExchangeID, Mode: contract.ModePositionMonitor, Symbols: []string{light.Symbol}})
	h.waitUpdate(light, lightCandles[len(lightCandles)-1].Start, true)

	recompute := contract.SvcRequest{User: heavy.User, Args: mustJSON(t, contract.RecomputeArgs{Series: heavy})}
	// Each of bob's applies is a reload-settings with a new RSI period:
	// his 1h series is rebuilt for it (300 bars).
	applies := 0
	apply := func() error {
		applies++
		st := stateB
		st.Revision = int64(applies)
		st.Settings.Indicators.RSI = 14 + applies%2
		st.UpdatedAt = time.Now().UTC()
		return h.timedCommand(contract.VerbApply, contract.SvcRequest{User: light.User, State: &st})
	}
	// phase sends bob's applies while alice's recomputes run back to back
	// on instance in (the first sent before bob's first command, the last
	// one waited for), until enough samples beside at least one whole
	// recompute, and returns their latencies and how long one recompute
	// took on average.
	phase := func(round int, where string, in *harness) ([]time.Duration, time.Duration) {
		var job sync.WaitGroup
		stopJob := make(chan struct{})
		var recomputes atomic.Int64
		began := time.Now()
		send := in.asyncRequest(contract.VerbRecompute, recompute)
		reply := send()
		job.Go(func() {
			for {
				if r := <-reply; !r.OK {
					t.Errorf("alice's recompute on %s: %+v", where, r.Error)
					return
				}
				recomputes.Add(1)
				select {
				case <-stopJob:
					return
				default:
				}
				reply = send()
			}
		})
		var out []time.Duration
		end := time.Now().Add(phaseMax)
		for (len(out) < phaseSamples || recomputes.Load() == 0) && time.Now().Before(end) {
			sent := time.Now()
			if err := apply(); err != nil {
				t.Fatalf("bob's apply %d: %v", applies, err)
			}
			out = append(out, time.Since(sent))
		}
		close(stopJob)
		job.Wait()
		took := time.Since(began)
		t.Logf("round %d: %d applies beside %d recomputes of alice's %d bars on %s (%s)",
			round, len(out), recomputes.Load(), bars, where, took.Round(time.Millisecond))
		return out, took / time.Duration(recomputes.Load())
	}
	var besideTwin, besideJob, recomputeTimes []time.Duration
	onJob := func(round int) {
		out, recomputeTime := phase(round, "bob's instance", h)
		besideJob = append(besideJob, out...)
		recomputeTimes = append(recomputeTimes, recomputeTime)
	}
	onTwin := func(round int) {
		out, _ := phase(round, "the twin", twin)
		besideTwin = append(besideTwin, out...)
	}
	// The phases run in the order job, twin, twin, job, ... so that a load
	// of the machine that grows or falls during the run (other tests,
	// other processes) weighs on both alike.
	for round := range phaseRounds {
		if round%2 == 0 {
			onJob(round)
			onTwin(round)
		} else {
			onTwin(round)
			onJob(round)
		}
	}
	b50, b90 := percentile(besideTwin, 50), percentile(besideTwin, 90)
	j50, j90 := percentile(besideJob, 50), percentile(besideJob, 90)
	margin := percentile(recomputeTimes, 50) / 4
	t.Logf("bob's applies beside alice's job on the twin: n=%d p50=%s p90=%s; on his instance: n=%d p50=%s p90=%s; margin %s (a quarter of a recompute)",
		len(besideTwin), b50, b90, len(besideJob), j50, j90, margin)
	if j50 > b50+margin || j90 > b90+margin {
		t.Fatalf("alice's heavy job delays bob: p50 %s vs %s, p90 %s vs %s beside the same job on the twin (margin %s, a quarter of one of her recomputes)", j50, b50, j90, b90, margin)
	}
}

// writeCandles writes cs to the harness's Redis database (keeping
// retention bars per series), in chunks.
func (h *harness) writeCandles(retention int, cs []contract.Candle) {
	h.t.Helper()
	store := redisstore.New(h.store.Client(), retention)
	for chunk := range slices.Chunk(cs, 2000) {
		if _, err := store.WriteCandles(context.Background(), chunk); err != nil {
			h.t.Fatal(err)
		}
	}
}

// startConfigured runs an instance with cfg in this process.
func (h *harness) startConfigured(cfg daemon.Config) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.Serve(ctx, cfg, h.t.Output()) }()
	h.t.Cleanup(func() { cancel(); <-done })
}

// asyncRequest returns a function that sends one request of verb on
// every call, at once from the caller's goroutine (so requests arrive in
// call order), and returns a channel with its one reply.
func (h *harness) asyncRequest(verb contract.Verb, req contract.SvcRequest) func() chan contract.SvcReply {
	body, err := json.Marshal(req)
	if err != nil {
		h.t.Fatal(err)
	}
	failed := func(err error) contract.SvcReply {
		return contract.SvcReply{Error: &contract.Error{Code: contract.CodeInternal, Message: err.Error()}}
	}
	return func() chan contract.SvcReply {
		out := make(chan contract.SvcReply, 1)
		sent, err := testenv.SendVerb(h.nc, contract.SvcIndicators, verb, body)
		if err != nil {
			out <- failed(err)
			return out
		}
		go func() {
			replies := sent.Collect(1, 5*time.Minute)
			if err := replies.Answered(1); err != nil {
				out <- failed(err)
				return
			}
			out <- replies[0]
		}()
		return out
	}
}

// timedCommand sends one request of verb and waits for the instance's
// reply, at most commandTimeout.
func (h *harness) timedCommand(verb contract.Verb, req contract.SvcRequest) error {
	_, err := h.tryRequest(verb, req, 1, commandTimeout)
	return err
}

// percentile is the p-th percentile of ds (nearest rank).
func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, (len(s)*p+99)/100-1)]
}

// longCandles are n closed hourly candles of series id: the reference bars
// over and over, re-timed to follow each other.
func longCandles(t *testing.T, id contract.SeriesID, n int) []contract.Candle {
	t.Helper()
	bars := testenv.BTCUSD1h(t)
	step := int64(id.Timeframe.Duration() / time.Second)
	first := bars[0].Start / step * step
	out := make([]contract.Candle, n)
	for i := range out {
		b := bars[i%len(bars)]
		start := first + int64(i)*step
		out[i] = contract.Candle{SeriesID: id, Start: start, Open: b.Open, High: b.High, Low: b.Low,
			Close: b.Close, Volume: b.Volume, Closed: true, Version: (start + step) * 1_000_000, Source: "test"}
	}
	return out
}

// TestCandleRebuildRunsBesideOtherUsers: a candle that makes its series be
// rebuilt from Redis (here a correction older than the replay depth of
// alice's long series) does not hold up the batch, the consumer or the
// engine's mutex while the rebuild reads, computes and writes: bob's
// candle, published right after it, is computed and published before
// alice's rebuilt series is, and the correction is in the rebuilt values.
func TestCandleRebuildRunsBesideOtherUsers(t *testing.T) {
	h := newHarness(t)
	const bars = 4000
	cfg := h.config("one")
	cfg.Retention = bars
	h.startConfigured(cfg)
	h.waitMembers(1)
	heavy := contract.SeriesID{User: "alice", UserID: 41, ExchangeID: 1, Symbol: "HEAVY-USD", Timeframe: contract.TF1h}
	light := contract.SeriesID{User: "bob", UserID: 42, ExchangeID: 1, Symbol: "LIGHT-USD", Timeframe: contract.TF1h}
	store := redisstore.New(h.store.Client(), bars)
	ctx := context.Background()
	heavyCandles, lightCandles := longCandles(t, heavy, bars), candles(t, light, 301, 1)
	lightNext := lightCandles[300]
	for _, cs := range [][]contract.Candle{heavyCandles, lightCandles[:300]} {
		if _, err := store.WriteCandles(ctx, cs); err != nil {
			t.Fatal(err)
		}
	}
	h.putState(contract.DesiredState{User: heavy.User, UserID: heavy.UserID, ExchangeID: heavy.ExchangeID, Mode: contract.ModePositionMonitor, Symbols: []string{heavy.Symbol}})
	h.putState(contract.DesiredState{User: light.User, UserID: light.UserID, ExchangeID: light.ExchangeID, Mode: contract.ModePositionMonitor, Symbols: []string{light.Symbol}})
	newest := h.waitUpdate(heavy, heavyCandles[bars-1].Start, true)
	h.waitUpdate(light, lightCandles[299].Start, true)

	// A correction 1,500 bars back, beyond the replay depth, with a
	// version above every stored one: alice's series is rebuilt, and its
	// newest bar's values get that version.
	corrected := heavyCandles[bars-1500]
	corrected.Close *= 1.01
	corrected.Version = heavyCandles[bars-1].Version + 1000
	h.feed(corrected, lightNext)
	isBob := func(r received) bool { return r.SeriesID == light && r.Start == lightNext.Start }
	isRebuilt := func(r received) bool {
		return r.SeriesID == heavy && r.Start == newest.Start && r.Version == corrected.Version
	}
	var alice received
	testenv.Eventually(t, 60*time.Second, func() error {
		rs := h.received(func(r received) bool { return isBob(r) || isRebuilt(r) })
		for _, r := range rs {
			if isRebuilt(r) {
				alice = r
			}
		}
		if len(rs) < 2 || alice.Version == 0 {
			return fmt.Errorf("%d of bob's new bar and alice's rebuilt newest bar seen", len(rs))
		}
		return nil
	})
	if order := h.received(func(r received) bool { return isBob(r) || isRebuilt(r) }); !isBob(order[0]) {
		t.Fatalf("alice's rebuilt series (version %d) was published before bob's candle at %d: the rebuild held bob up", alice.Version, lightNext.Start)
	}
	for name := range alice.Values {
		if p := h.stored(heavy, name)[corrected.Start]; p.Version != corrected.Version {
			t.Fatalf("stored %s at the corrected bar has version %d, want %d", name, p.Version, corrected.Version)
		}
	}
	// Every candle is acked (the correction once its rebuild was done):
	// none waits for delivery or acknowledgement.
	h.waitAllAcked()
}
