package figures

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"vigil.dev/bench/internal/report"
	"vigil.dev/bench/internal/stack"
	"vigil.dev/bench/internal/stats"
	"vigil.dev/pkg/contract"
)

// clearBatch is how many keys one DEL of the baseline deletes: the batch
// size of vigil's own SCAN + UNLINK (redisstore.ClearBatch).
const clearBatch = 500

// Clear measures figure 5: clear-cache (scope all) of every user, one
// after the other, through vigil-control (indicators.forget, then SCAN +
// UNLINK) over ClearKeys keys of ClearUsers users, with a PING loop
// recording how long Redis stalls; then the same on a fresh fill with KEYS
// + DEL per user, the naive way.
func Clear(ctx context.Context, env *Env, out *Output) error {
	env.Log.Info("clear: starting the stack (control, indicators)")
	s, err := env.newStack(ctx, "clear")
	if err != nil {
		return err
	}
	defer s.Close()
	tokens := make([]string, env.Opts.ClearUsers)
	for i := range tokens {
		tokens[i] = fmt.Sprintf("clear-%d", i)
	}
	accounts, err := s.seed(ctx, tokens, commandUserSettings)
	if err != nil {
		return err
	}
	if _, err := s.start(ctx, []string{stack.Indicators, stack.Control}, 1, 1); err != nil {
		return err
	}
	if err := s.waitStates(ctx, tokens); err != nil {
		return err
	}
	cmd, err := newCommander(s.nc)
	if err != nil {
		return err
	}
	defer cmd.close()
	rdb := redis.NewClient(&redis.Options{Addr: s.servers.Redis.Addr(), PoolSize: 4, ReadTimeout: time.Minute})
	defer rdb.Close()
	perUser := env.Opts.ClearKeys / len(accounts)

	env.Log.Info("clear: filling Redis", "keys", perUser*len(accounts), "users", len(accounts))
	fillVigil, err := fillKeys(ctx, rdb, accounts, perUser)
	if err != nil {
		return err
	}
	env.Log.Info("clear: clear-cache through vigil-control", "users", len(accounts))
	if err := resetLatency(ctx, rdb); err != nil {
		return err
	}
	loop := startPing(ctx, s.servers.Redis.Addr())
	waitProfile := env.profile(ctx, "clear", s.procs(stack.Control), 10*time.Second, out)
	var vigil []time.Duration
	deleted := map[string]int{}
	began := time.Now()
	for _, a := range accounts {
		res, elapsed, err := cmd.run(ctx, a.Token, contract.CmdClearCache, contract.ClearCachePayload{Scope: contract.ScopeAll}, 10*time.Minute)
		if err != nil {
			loop.stop()
			return err
		}
		if res.Status != contract.StatusSucceeded {
			loop.stop()
			return fmt.Errorf("%w: clear-cache of %s: %s", ErrFigure, a.Token, errText(res.Error))
		}
		var body struct {
			Deleted int `json:"deletedCount"`
		}
		_ = json.Unmarshal(res.Result, &body)
		deleted[a.Token] = body.Deleted
		vigil = append(vigil, elapsed)
	}
	vigilTotal := time.Since(began)
	vigilPings := loop.stop()
	waitProfile()
	// The noise floor: the longest PING of an idle Redis over as long as
	// vigil's clear took (the machine is shared).
	idleLong := pingFor(ctx, s.servers.Redis.Addr(), min(vigilTotal, 30*time.Second))
	vigilLatency, err := latestLatency(ctx, rdb)
	if err != nil {
		return err
	}
	left, err := rdb.DBSize(ctx).Result()
	if err != nil {
		return err
	}

	env.Log.Info("clear: refilling Redis for KEYS + DEL")
	fillBase, err := fillKeys(ctx, rdb, accounts, perUser)
	if err != nil {
		return err
	}
	if err := resetLatency(ctx, rdb); err != nil {
		return err
	}
	loop = startPing(ctx, s.servers.Redis.Addr())
	var base []time.Duration
	began = time.Now()
	for _, a := range accounts {
		t0 := time.Now()
		if err := keysAndDel(ctx, rdb, a); err != nil {
			loop.stop()
			return err
		}
		base = append(base, time.Since(t0))
	}
	baseTotal := time.Since(began)
	basePings := loop.stop()
	baseLatency, err := latestLatency(ctx, rdb)
	if err != nil {
		return err
	}

	total := perUser * len(accounts)
	duration := report.Row{Number: 5, Figure: "clear", Name: fmt.Sprintf("clear-cache per user, %d keys of %d users", total, len(accounts)), Unit: "ms",
		Value: report.Times(stats.Summarize(stats.Millis(vigil))), Target: "reported",
		Note: fmt.Sprintf("all users: %.2fs vs %.2fs", vigilTotal.Seconds(), baseTotal.Seconds())}
	duration.Compare("KEYS + DEL per user", report.Times(stats.Summarize(stats.Millis(base))), false)
	stall := report.Row{Number: 5, Figure: "clear", Name: "Redis stall (PING) during clear-cache", Unit: "ms",
		Value: report.Worst(stats.Summarize(stats.Millis(vigilPings))), Target: "max ≤ 1/100",
		Note: fmt.Sprintf("PINGs over 10 ms: %d of %d vs %d of %d; idle Redis over %.0fs: max %.1f ms, %d over 10 ms",
			slower(vigilPings, 10*time.Millisecond), len(vigilPings), slower(basePings, 10*time.Millisecond), len(basePings),
			min(vigilTotal, 30*time.Second).Seconds(), stats.Summarize(stats.Millis(idleLong)).Max, slower(idleLong, 10*time.Millisecond))}
	stall.Compare("PING during KEYS + DEL", report.Worst(stats.Summarize(stats.Millis(basePings))), false)
	stall.SetMet(stall.Ratio != nil && stall.Ratio.Tail <= 0.01)
	server := report.Row{Number: 5, Figure: "clear", Name: "Redis server-side stall (LATENCY monitor) during clear-cache", Unit: "ms",
		Value: report.Single(float64(vigilLatency.max)), Target: "max ≤ 1/100",
		Note: fmt.Sprintf("longest event: %s vs %s (events of 1 ms or more; 0 = none)", vigilLatency, baseLatency)}
	server.Compare("during KEYS + DEL", report.Single(float64(baseLatency.max)), false)
	server.SetMet(vigilLatency.max*100 <= baseLatency.max)
	out.add("clear", map[string]any{
		"keys": total, "users": len(accounts), "deleted": deleted, "keys_left_after_vigil": left,
		"fill_s":            []float64{fillVigil.Seconds(), fillBase.Seconds()},
		"vigil_per_user_ms": stats.Summarize(stats.Millis(vigil)), "vigil_total_s": vigilTotal.Seconds(),
		"keys_del_per_user_ms": stats.Summarize(stats.Millis(base)), "keys_del_total_s": baseTotal.Seconds(),
		"ping_vigil_ms": stats.Summarize(stats.Millis(vigilPings)), "ping_keys_del_ms": stats.Summarize(stats.Millis(basePings)),
		"ping_idle_as_long_as_vigil_ms": stats.Summarize(stats.Millis(idleLong)),
		"latency_vigil":                 vigilLatency.events, "latency_keys_del": baseLatency.events,
		"slowlog_vigil": vigilLatency.slowest, "slowlog_keys_del": baseLatency.slowest,
		"slowlog_counts_vigil": vigilLatency.slowCounts, "slowlog_counts_keys_del": baseLatency.slowCounts,
	}, duration, stall, server)
	for token, n := range deleted {
		if n != perUser {
			return fmt.Errorf("%w: clear-cache of %s deleted %d keys, want %d", ErrFigure, token, n, perUser)
		}
	}
	return nil
}

// fillKeys writes perUser keys for every account, half candle and half
// indicator series (small sorted sets), in pipelines from two clients.
func fillKeys(ctx context.Context, rdb *redis.Client, accounts []account, perUser int) (time.Duration, error) {
	began := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(accounts))
	work := make(chan account)
	for range 2 {
		wg.Go(func() {
			for a := range work {
				if err := fillAccount(ctx, rdb, a, perUser); err != nil {
					errs <- err
				}
			}
		})
	}
	for _, a := range accounts {
		work <- a
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, fmt.Errorf("fill: %w", err)
	}
	return time.Since(began), nil
}

// fillAccount writes one account's keys in pipelines of 5000.
func fillAccount(ctx context.Context, rdb *redis.Client, a account, n int) error {
	const pipeLen = 5000
	prefix := strconv.FormatInt(a.UserID, 10) + ":" + strconv.FormatInt(a.ExchangeID, 10) + ":K"
	pipe := rdb.Pipeline()
	for i := range n {
		var key string
		if i%2 == 0 {
			key = "candles:" + prefix + strconv.Itoa(i/2) + "-USD:1m"
		} else {
			key = "indicator:" + prefix + strconv.Itoa(i/2) + "-USD:1m:ema_20"
		}
		pipe.ZAdd(ctx, key, redis.Z{Score: 1, Member: `{"start":1,"version":1}`})
		if pipe.Len() == pipeLen || i == n-1 {
			if _, err := pipe.Exec(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// keysAndDel deletes an account's candle and indicator keys the naive
// way: KEYS with the pattern, then DEL in batches.
func keysAndDel(ctx context.Context, rdb *redis.Client, a account) error {
	sel := contract.CacheSelector{UserID: a.UserID, ExchangeID: a.ExchangeID, Scope: contract.ScopeAll}
	patterns, err := sel.ScanPatterns()
	if err != nil {
		return err
	}
	for _, p := range patterns {
		keys, err := rdb.Keys(ctx, p).Result()
		if err != nil {
			return err
		}
		for lo := 0; lo < len(keys); lo += clearBatch {
			if err := rdb.Del(ctx, keys[lo:min(lo+clearBatch, len(keys))]...).Err(); err != nil {
				return err
			}
		}
	}
	return nil
}

// pingLoop PINGs Redis back to back on its own connection and records
// each round trip.
type pingLoop struct {
	cancel context.CancelFunc
	done   chan []time.Duration
}

func startPing(ctx context.Context, addr string) *pingLoop {
	ctx, cancel := context.WithCancel(ctx)
	l := &pingLoop{cancel: cancel, done: make(chan []time.Duration, 1)}
	client := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, ReadTimeout: time.Minute})
	go func() {
		defer client.Close()
		var rtts []time.Duration
		for ctx.Err() == nil {
			t0 := time.Now()
			if err := client.Ping(ctx).Err(); err != nil {
				break
			}
			rtts = append(rtts, time.Since(t0))
		}
		l.done <- rtts
	}()
	return l
}

// stop ends the loop and returns the round trips.
func (l *pingLoop) stop() []time.Duration {
	l.cancel()
	return <-l.done
}

// pingFor runs a PING loop for d.
func pingFor(ctx context.Context, addr string, d time.Duration) []time.Duration {
	l := startPing(ctx, addr)
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	return l.stop()
}

// slower counts the durations above limit.
func slower(ds []time.Duration, limit time.Duration) int {
	n := 0
	for _, d := range ds {
		if d > limit {
			n++
		}
	}
	return n
}

// latency is what Redis's latency monitor recorded: the longest latency
// in ms of each event (command, fast-command, expire-cycle, ...), and the
// five slowest commands of the slow log (2 ms or more, all kept).
type latency struct {
	events  map[string]int64
	max     int64
	worst   string
	slowest []string
	// slowCounts counts the slow log's entries by command and bound
	// ("scan ≥ 10ms").
	slowCounts map[string]int
}

func (l latency) String() string {
	if l.worst == "" {
		return "none"
	}
	return fmt.Sprintf("%s %d ms", l.worst, l.max)
}

// resetLatency turns Redis's latency monitor on for events of 1 ms or
// more and clears what it recorded.
func resetLatency(ctx context.Context, rdb *redis.Client) error {
	if err := rdb.ConfigSet(ctx, "latency-monitor-threshold", "1").Err(); err != nil {
		return fmt.Errorf("latency monitor: %w", err)
	}
	for name, value := range map[string]string{"slowlog-log-slower-than": "2000", "slowlog-max-len": "100000"} {
		if err := rdb.ConfigSet(ctx, name, value).Err(); err != nil {
			return fmt.Errorf("slowlog: %w", err)
		}
	}
	if err := rdb.SlowLogReset(ctx).Err(); err != nil {
		return fmt.Errorf("slowlog: %w", err)
	}
	return rdb.Do(ctx, "LATENCY", "RESET").Err()
}

// latestLatency reads LATENCY LATEST: per event, its longest latency.
func latestLatency(ctx context.Context, rdb *redis.Client) (latency, error) {
	l := latency{events: map[string]int64{}}
	rows, err := rdb.Do(ctx, "LATENCY", "LATEST").Slice()
	if err != nil {
		return l, fmt.Errorf("latency latest: %w", err)
	}
	for _, row := range rows {
		fields, ok := row.([]any)
		if !ok || len(fields) < 4 {
			continue
		}
		name, _ := fields[0].(string)
		most, _ := fields[3].(int64)
		l.events[name] = most
		if most > l.max {
			l.max, l.worst = most, name
		}
	}
	slow, err := rdb.SlowLogGet(ctx, -1).Result()
	if err != nil {
		return l, fmt.Errorf("slowlog: %w", err)
	}
	l.slowCounts = map[string]int{}
	for _, e := range slow {
		for _, bound := range []time.Duration{2 * time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond} {
			if e.Duration >= bound && len(e.Args) > 0 {
				l.slowCounts[fmt.Sprintf("%s ≥ %s", strings.ToLower(e.Args[0]), bound)]++
			}
		}
	}
	slices.SortFunc(slow, func(a, b redis.SlowLog) int { return cmp.Compare(b.Duration, a.Duration) })
	for _, e := range slow[:min(5, len(slow))] {
		l.slowest = append(l.slowest, fmt.Sprintf("%s %s", e.Duration.Round(time.Microsecond), strings.Join(e.Args[:min(3, len(e.Args))], " ")))
	}
	return l, nil
}
