package figures

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
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
	idle := pingFor(ctx, s.servers.Redis.Addr(), time.Second)
	env.Log.Info("clear: clear-cache through vigil-control", "users", len(accounts))
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
	left, err := rdb.DBSize(ctx).Result()
	if err != nil {
		return err
	}

	env.Log.Info("clear: refilling Redis for KEYS + DEL")
	fillBase, err := fillKeys(ctx, rdb, accounts, perUser)
	if err != nil {
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

	total := perUser * len(accounts)
	duration := report.Row{Number: 5, Figure: "clear", Name: fmt.Sprintf("clear-cache per user, %d keys of %d users", total, len(accounts)), Unit: "ms",
		Value: report.Times(stats.Summarize(stats.Millis(vigil))), Target: "reported",
		Note: fmt.Sprintf("all users: %.2fs vs %.2fs", vigilTotal.Seconds(), baseTotal.Seconds())}
	duration.Compare("KEYS + DEL per user", report.Times(stats.Summarize(stats.Millis(base))), false)
	stall := report.Row{Number: 5, Figure: "clear", Name: "Redis stall (PING) during clear-cache", Unit: "ms",
		Value: report.Worst(stats.Summarize(stats.Millis(vigilPings))), Target: "max ≤ 1/100",
		Note: fmt.Sprintf("%d and %d PINGs; idle PING p99 %.2f ms", len(vigilPings), len(basePings), stats.Summarize(stats.Millis(idle)).P99)}
	stall.Compare("PING during KEYS + DEL", report.Worst(stats.Summarize(stats.Millis(basePings))), false)
	stall.SetMet(stall.Ratio != nil && stall.Ratio.Tail <= 0.01)
	out.add("clear", map[string]any{
		"keys": total, "users": len(accounts), "deleted": deleted, "keys_left_after_vigil": left,
		"fill_s":            []float64{fillVigil.Seconds(), fillBase.Seconds()},
		"vigil_per_user_ms": stats.Summarize(stats.Millis(vigil)), "vigil_total_s": vigilTotal.Seconds(),
		"keys_del_per_user_ms": stats.Summarize(stats.Millis(base)), "keys_del_total_s": baseTotal.Seconds(),
		"ping_vigil_ms": stats.Summarize(stats.Millis(vigilPings)), "ping_keys_del_ms": stats.Summarize(stats.Millis(basePings)),
		"ping_idle_ms": stats.Summarize(stats.Millis(idle)),
	}, duration, stall)
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
