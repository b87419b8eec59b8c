package figures

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"vigil.dev/bench/internal/report"
	"vigil.dev/bench/internal/stack"
	"vigil.dev/bench/internal/stats"
	"vigil.dev/pkg/candlewriter"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
)

// pipelineBatch is how many candles one Redis pipeline and one round of
// JetStream publishes carry, as in the feed's writer.
const pipelineBatch = candlewriter.Batch

// pipelinePoll is how often the pipeline's progress is sampled.
const pipelinePoll = 250 * time.Millisecond

// pipelineStall ends a pipeline run that made no progress for this long.
const pipelineStall = 60 * time.Second

// pipelineParams are the short indicator periods of the pipeline users:
// the position-monitor indicators (two EMAs, RSI, MACD, ATR, Bollinger)
// warm after a few bars, so most updates carry every value. An update's
// work does not depend on the periods.
var pipelineParams = contract.IndicatorParams{
	EMA: []int{3, 5}, RSI: 3, MACD: &contract.MACDParams{Fast: 2, Slow: 4, Signal: 2},
	ATR: 3, Bollinger: &contract.BollingerParam{Period: 3, StdDev: 2},
}

// pipelinePlan splits a series count into users of at most MaxSymbols
// symbols, three timeframes each (position-monitor).
func pipelinePlan(series int) (users, symbols int) {
	tfs := len(contract.ModePositionMonitor.Timeframes())
	perUser := contract.DefaultLimits.MaxSymbols * tfs
	users = (series + perUser - 1) / perUser
	symbols = (series + users*tfs - 1) / (users * tfs)
	return users, symbols
}

// pipelineSettings are the settings of pipeline user i: symbols
// P<i>S<j>-USD, short periods, and two rules that never fire (the alerts
// are evaluated, not recorded).
func pipelineSettings(symbols int) func(int) contract.Settings {
	return func(i int) contract.Settings {
		syms := make([]string, symbols)
		for j := range syms {
			syms[j] = fmt.Sprintf("P%dS%d-USD", i, j)
		}
		huge, never := 1e12, 101.0
		rules := []contract.Rule{
			{ID: "price-huge", Symbol: syms[0], Timeframe: contract.TF1h, Kind: contract.RuleThreshold,
				SeriesRef: contract.SeriesRef{Indicator: "price"}, Op: contract.OpAbove, Value: &huge},
			{ID: "rsi-never", Symbol: syms[len(syms)-1], Timeframe: contract.TF4h, Kind: contract.RuleThreshold,
				SeriesRef: contract.SeriesRef{Indicator: "rsi_3"}, Op: contract.OpAbove, Value: &never},
		}
		return contract.Settings{Mode: contract.ModePositionMonitor, Symbols: syms, Indicators: pipelineParams,
			Rules: map[contract.Mode][]contract.Rule{contract.ModePositionMonitor: rules}}
	}
}

// Pipeline measures figure 3 at every PipelineSeries count, and the RSS
// half of figure 7. The runner plays the feed: it writes each candle
// update through pkg/redisstore (versioned EVALSHA pipelines of 500) and
// publishes the written ones on VIGIL_CANDLES with Nats-Msg-Id, exactly as
// vigil-feed's writer does, one closed bar of every series after the
// other; vigil-indicators and vigil-alerts (one instance each) do the
// rest. The rate is candle updates per second through to the alerts'
// evaluations. The baseline is the same number of candle writes from one
// client through the same EVALSHA pipelines, without the rest.
func Pipeline(ctx context.Context, env *Env, out *Output) error {
	details := map[string]any{}
	for i, series := range env.Opts.PipelineSeries {
		d, err := pipelineAt(ctx, env, out, series, i == len(env.Opts.PipelineSeries)-1)
		if err != nil {
			return err
		}
		details[fmt.Sprint(series)] = d
	}
	out.add("pipeline", details)
	return nil
}

// pipelineAt measures one series count; withRSS adds the RSS rows.
func pipelineAt(ctx context.Context, env *Env, out *Output, series int, withRSS bool) (map[string]any, error) {
	users, symbols := pipelinePlan(series)
	series = users * symbols * len(contract.ModePositionMonitor.Timeframes())
	bars := max(PipelineMinBars, (env.Opts.PipelineUpdates+series-1)/series)
	total := series * bars
	env.Log.Info("pipeline: starting the stack", "series", series, "users", users, "symbols_per_user", symbols, "bars", bars, "updates", total)
	s, err := env.newStack(ctx, fmt.Sprintf("pipeline%d", series))
	if err != nil {
		return nil, err
	}
	defer s.Close()
	tokens := make([]string, users)
	for i := range tokens {
		tokens[i] = fmt.Sprintf("pipe-%d", i)
	}
	accounts, err := s.seed(ctx, tokens, pipelineSettings(symbols))
	if err != nil {
		return nil, err
	}
	procs, err := s.start(ctx, []string{stack.Indicators, stack.Alerts}, 1, 1)
	if err != nil {
		return nil, err
	}
	idle := map[string]int64{}
	for _, p := range procs {
		if idle[p.Service], err = p.RSS(); err != nil {
			return nil, err
		}
	}
	// vigil-control writes every user's desired state from their
	// settings at start; the figure needs nothing else from it.
	ctl, err := s.launcher.Start(ctx, stack.Control, "vigil-control-1")
	if err != nil {
		return nil, err
	}
	if err := s.waitStates(ctx, tokens); err != nil {
		return nil, err
	}
	if err := ctl.Stop(); err != nil {
		return nil, err
	}
	if err := waitPipelineReady(ctx, s, series, users); err != nil {
		return nil, err
	}

	rdb, err := redisstore.NewClient(ctx, s.servers.RedisURL())
	if err != nil {
		return nil, err
	}
	defer rdb.Close()
	baseClient, err := redisstore.NewClient(ctx, s.servers.Redis.DatabaseURL(1))
	if err != nil {
		return nil, err
	}
	defer baseClient.Close()
	env.Log.Info("pipeline: baseline, raw EVALSHA pipelines from one client", "candles", total)
	baseRates, baseTotal, err := redisBaseline(ctx, redisstore.New(baseClient, 0), accounts, symbols, bars)
	if err != nil {
		return nil, err
	}
	if err := baseClient.FlushDB(ctx).Err(); err != nil {
		return nil, err
	}

	jsRate, err := jetStreamBaseline(ctx, s.js, accounts, symbols, bars)
	if err != nil {
		return nil, err
	}
	env.Log.Info("pipeline: candles through feed → Redis → indicators → alerts", "updates", total)
	run, err := runPipeline(ctx, env, out, s, redisstore.New(rdb, 0), accounts, symbols, bars)
	if err != nil {
		return nil, err
	}
	rss := map[string]int64{}
	for _, p := range procs {
		if rss[p.Service], err = p.RSS(); err != nil {
			return nil, err
		}
	}
	row := report.Row{Number: 3, Figure: "pipeline", Name: fmt.Sprintf("pipeline candle updates/s, %d series", series), Unit: "updates/s",
		Value: report.Rates(stats.Summarize(run.rates)), Target: "≥ 0.5×",
		Note: fmt.Sprintf("overall %.0f vs %.0f updates/s = %.3f×; %d updates, %d evaluations, alerts at most %d behind; runner as feed %.0f/s; JetStream publish alone %.0f/s",
			run.overall, baseTotal, run.overall/baseTotal, total, run.evaluations, run.alertsLag, run.feedRate, jsRate)}
	row.Compare("raw Redis EVALSHA pipelines, one client", report.Rates(stats.Summarize(baseRates)), false)
	row.SetMet(row.Ratio != nil && row.Ratio.Median >= 0.5 && run.overall/baseTotal >= 0.5)
	out.add("", nil, row)
	if withRSS {
		for _, svc := range []string{stack.Indicators, stack.Alerts} {
			r := report.Row{Number: 7, Figure: "pipeline", Name: fmt.Sprintf("RSS of %s at %d series", svc, series), Unit: "MiB",
				Value: report.Single(float64(rss[svc]) / (1 << 20)), Target: "reported",
				Note: fmt.Sprintf("%.1f KiB per series above idle", float64(rss[svc]-idle[svc])/1024/float64(series))}
			r.Compare("same process idle, before any user", report.Single(float64(idle[svc])/(1<<20)), false)
			out.add("", nil, r)
		}
	}
	return map[string]any{"series": series, "users": users, "symbols_per_user": symbols, "bars": bars, "updates": total,
		"pipeline_rate_samples": stats.Summarize(run.rates), "pipeline_overall_per_s": run.overall,
		"indicator_updates_per_s": run.indicatorRate, "feed_side_per_s": run.feedRate, "pipeline_s": run.elapsed.Seconds(),
		"alerts_evaluations": run.evaluations, "indicator_updates": run.indicatorUpdates, "alerts_max_lag": run.alertsLag,
		"redis_rate_samples": stats.Summarize(baseRates), "redis_overall_per_s": baseTotal, "jetstream_publish_per_s": jsRate,
		"rss_idle_bytes": idle, "rss_bytes": rss}, nil
}

// waitPipelineReady waits until vigil-indicators runs every series and
// vigil-alerts every user with their rules.
func waitPipelineReady(ctx context.Context, s *benchStack, series, users int) error {
	return poll(ctx, 5*time.Minute, fmt.Sprintf("indicators running %d series and alerts %d users", series, users), func() (bool, error) {
		ind, err := statuses[contract.IndicatorsStatus](s.nc, contract.SvcIndicators, 1)
		if err != nil || len(ind) == 0 || ind[0].Series != series {
			return false, err
		}
		al, err := statuses[contract.AlertsStatus](s.nc, contract.SvcAlerts, 1)
		if err != nil || len(al) == 0 || len(al[0].Users) != users {
			return false, err
		}
		for _, u := range al[0].Users {
			if u.RulesLoaded == 0 {
				return false, nil
			}
		}
		return true, nil
	})
}

// candleSource makes the closed bars of every series of the accounts,
// one bar of every series after the other, as a random walk.
type candleSource struct {
	series []contract.SeriesID
	prices []float64
	first  map[contract.Timeframe]int64
	rng    *rand.Rand
}

func newCandleSource(accounts []account, symbols, bars int) *candleSource {
	cs := &candleSource{first: map[contract.Timeframe]int64{}, rng: rand.New(rand.NewPCG(9, uint64(bars)))}
	now := time.Now().Unix()
	for _, tf := range contract.ModePositionMonitor.Timeframes() {
		d := int64(tf.Duration() / time.Second)
		cs.first[tf] = (now - int64(bars+2)*d) / d * d
	}
	for _, a := range accounts {
		for _, sym := range a.Settings.Symbols[:symbols] {
			for _, tf := range contract.ModePositionMonitor.Timeframes() {
				cs.series = append(cs.series, contract.SeriesID{User: a.Token, UserID: a.UserID, ExchangeID: a.ExchangeID, Symbol: sym, Timeframe: tf})
				cs.prices = append(cs.prices, 20_000+cs.rng.Float64()*40_000)
			}
		}
	}
	return cs
}

// bar returns bar j of every series.
func (cs *candleSource) bar(j int) []contract.Candle {
	out := make([]contract.Candle, len(cs.series))
	for i, id := range cs.series {
		open := cs.prices[i]
		closePrice := open * (1 + (cs.rng.Float64()-0.5)*0.01)
		high := math.Max(open, closePrice) * (1 + cs.rng.Float64()*0.002)
		low := math.Min(open, closePrice) * (1 - cs.rng.Float64()*0.002)
		cs.prices[i] = closePrice
		out[i] = contract.Candle{SeriesID: id, Start: cs.first[id.Timeframe] + int64(j)*int64(id.Timeframe.Duration()/time.Second),
			Open: open, High: high, Low: low, Close: closePrice, Volume: cs.rng.Float64() * 100, Closed: true,
			Version: time.Now().UnixMicro(), Source: "bench"}
	}
	return out
}

// redisBaseline writes the same candles as the pipeline run through
// store (WriteCandlesEach, EVALSHA pipelines of pipelineBatch) from one
// client, and returns the rate of every batch and the overall rate.
func redisBaseline(ctx context.Context, store *redisstore.Store, accounts []account, symbols, bars int) ([]float64, float64, error) {
	src := newCandleSource(accounts, symbols, bars)
	var rates []float64
	n := 0
	began := time.Now()
	for j := range bars {
		candles := src.bar(j)
		for lo := 0; lo < len(candles); lo += pipelineBatch {
			batch := candles[lo:min(lo+pipelineBatch, len(candles))]
			t0 := time.Now()
			if _, err := store.WriteCandlesEach(ctx, batch); err != nil {
				return nil, 0, fmt.Errorf("baseline write: %w", err)
			}
			rates = append(rates, float64(len(batch))/time.Since(t0).Seconds())
			n += len(batch)
		}
	}
	return rates, float64(n) / time.Since(began).Seconds(), nil
}

// jetStreamBaseline publishes the pipeline's candles, as the feed does
// (asynchronously, waiting for the acknowledgements of every batch of
// pipelineBatch), on a stream of their own configured like VIGIL_CANDLES,
// and returns the rate: the ceiling the JetStream hop alone puts on the
// pipeline.
func jetStreamBaseline(ctx context.Context, js jetstream.JetStream, accounts []account, symbols, bars int) (float64, error) {
	cfg := jetstream.StreamConfig{Name: "BENCH_CANDLES", Subjects: []string{"bench.candle.>"}, Storage: jetstream.FileStorage,
		MaxMsgsPerSubject: 10_000, Duplicates: 2 * time.Minute}
	if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
		return 0, err
	}
	defer js.DeleteStream(context.WithoutCancel(ctx), cfg.Name) //nolint:errcheck // best effort
	src := newCandleSource(accounts, symbols, bars)
	n := 0
	began := time.Now()
	for j := range bars {
		candles := src.bar(j)
		for lo := 0; lo < len(candles); lo += pipelineBatch {
			batch := candles[lo:min(lo+pipelineBatch, len(candles))]
			futures := make([]jetstream.PubAckFuture, 0, len(batch))
			for _, c := range batch {
				data, err := json.Marshal(c)
				if err != nil {
					return 0, err
				}
				msg := nats.NewMsg("bench.candle." + c.User + "." + c.Symbol + "." + string(c.Timeframe))
				msg.Data = data
				msg.Header.Set(jetstream.MsgIDHeader, c.MsgID())
				f, err := js.PublishMsgAsync(msg)
				if err != nil {
					return 0, err
				}
				futures = append(futures, f)
			}
			for _, f := range futures {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					return 0, err
				case <-ctx.Done():
					return 0, ctx.Err()
				}
			}
			n += len(batch)
		}
	}
	return float64(n) / time.Since(began).Seconds(), nil
}

// pipelineRun is what one pipeline run measured.
type pipelineRun struct {
	rates                  []float64
	overall, indicatorRate float64
	feedRate               float64
	elapsed                time.Duration
	evaluations            int64
	indicatorUpdates       int64
	// alertsLag is the most indicator updates published but not yet
	// evaluated at a poll: how far the alerts fell behind the indicators.
	alertsLag int64
}

// runPipeline writes and publishes every bar of every series like the
// feed, and samples the indicators' published updates and the alerts'
// evaluations until every update was evaluated.
func runPipeline(ctx context.Context, env *Env, out *Output, s *benchStack, store *redisstore.Store, accounts []account, symbols, bars int) (pipelineRun, error) {
	var run pipelineRun
	src := newCandleSource(accounts, symbols, bars)
	total := int64(len(src.series) * bars)
	stream, err := s.js.Stream(ctx, contract.StreamIndicators)
	if err != nil {
		return run, err
	}
	indicatorSeq := func() (uint64, error) {
		info, err := stream.Info(ctx)
		if err != nil {
			return 0, err
		}
		return info.State.LastSeq, nil
	}
	evaluations := func() (int64, error) {
		st, err := statuses[contract.AlertsStatus](s.nc, contract.SvcAlerts, 1)
		if err != nil || len(st) == 0 {
			return 0, errors.Join(err, fmt.Errorf("%w: vigil-alerts did not answer status", ErrFigure))
		}
		var n int64
		for _, u := range st[0].Users {
			n += u.Evaluations
		}
		return n, nil
	}
	seq0, err := indicatorSeq()
	if err != nil {
		return run, err
	}
	eval0, err := evaluations()
	if err != nil {
		return run, err
	}

	waitProfile := env.profile(ctx, fmt.Sprintf("pipeline%d", len(src.series)),
		append(s.procs(stack.Indicators), s.procs(stack.Alerts)...), 15*time.Second, out)
	defer waitProfile()
	began := time.Now()
	feedDone := make(chan error, 1)
	go func() { feedDone <- feedCandles(ctx, s.js, store, src, bars) }()
	var feedElapsed time.Duration
	lastEval, lastAt, lastProgress := eval0, began, began
	var evals int64
	for evals-eval0 < total {
		select {
		case <-ctx.Done():
			return run, ctx.Err()
		case err := <-feedDone:
			if err != nil {
				return run, err
			}
			feedElapsed, feedDone = time.Since(began), nil // a nil channel is never ready again
			continue
		case <-time.After(pipelinePoll):
		}
		if evals, err = evaluations(); err != nil {
			return run, err
		}
		seq, err := indicatorSeq()
		if err != nil {
			return run, err
		}
		run.alertsLag = max(run.alertsLag, int64(seq-seq0)-(evals-eval0))
		now := time.Now()
		if evals > lastEval {
			// An interval that began before the first evaluation is not
			// a full interval of work.
			if lastEval > eval0 {
				run.rates = append(run.rates, float64(evals-lastEval)/now.Sub(lastAt).Seconds())
			}
			lastProgress = now
		}
		lastEval, lastAt = evals, now
		if now.Sub(lastProgress) > pipelineStall {
			return run, fmt.Errorf("%w: pipeline stalled at %d of %d evaluations (logs in %s)", ErrFigure, evals-eval0, total, s.logDir())
		}
	}
	run.elapsed = time.Since(began)
	if feedDone != nil {
		if err := <-feedDone; err != nil {
			return run, err
		}
		feedElapsed = time.Since(began)
	}
	run.feedRate = float64(total) / feedElapsed.Seconds()
	seq, err := indicatorSeq()
	if err != nil {
		return run, err
	}
	run.evaluations = evals - eval0
	run.indicatorUpdates = int64(seq - seq0)
	run.overall = float64(total) / run.elapsed.Seconds()
	run.indicatorRate = float64(run.indicatorUpdates) / run.elapsed.Seconds()
	if len(run.rates) > 1 {
		run.rates = run.rates[:len(run.rates)-1] // the last interval ended early
	}
	return run, nil
}

// feedCandles writes every bar as vigil-feed does, through
// pkg/candlewriter: a batch stored in Redis (versioned add-if-newer), the
// written candles published on JetStream with Nats-Msg-Id.
func feedCandles(ctx context.Context, js jetstream.JetStream, store *redisstore.Store, src *candleSource, bars int) error {
	w := candlewriter.New(store, js, slog.New(slog.DiscardHandler), nil)
	for j := range bars {
		if _, err := w.Write(ctx, src.bar(j)); err != nil {
			return fmt.Errorf("feed: %w", err)
		}
	}
	return nil
}
