package sequences

// This file: force-backfill, one timeframe at a time, and how a pause or
// a cancel stops it (feed.cancel, then indicators.recompute of what the
// stopped job left).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"vigil.dev/pkg/contract"
)

func (r *Runner) forceBackfill(ctx context.Context, cmd Command, p contract.ForceBackfillPayload) Outcome {
	cur, err := r.stateFor(ctx, cmd)
	if err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	st := cur.State
	if err := p.CheckWatched(st.WatchedSymbols()); err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	in := planInputs(cmd, st)
	in.Exchange = st.ExchangeID
	if isDryRun(cmd) {
		return r.planBackfill(ctx, cmd, p, in, st)
	}
	if err := checkPlan(ctx, cmd, in); err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	tfs := p.BackfillTimeframes()
	candles := map[contract.Timeframe]int{}
	var steps []contract.Step
	progress := func(done int, msg string) {
		ev := contract.Progress{ID: cmd.ID, Done: done, Total: len(tfs), Unit: "timeframes", Message: msg}
		if err := r.d.Progress.PublishProgress(ctx, cmd.User, ev); err != nil && ctx.Err() == nil {
			r.d.Log.WarnContext(ctx, "progress not published", "id", cmd.ID, "err", err)
		}
	}
	progress(0, fmt.Sprintf("backfilling %s %v", p.Symbol, tfs))
	for i, job := range r.backfillJobs(cmd, p, st) {
		tf, tfFrom, series, args := job.tf, job.args.From, job.series, job.args
		s, replies, err := r.run(ctx, cmd, &st, []stepSpec{{contract.SvcFeed, contract.VerbBackfill}}, args, r.cfg.BackfillTimeout)
		steps = append(steps, s...)
		if err == nil {
			candles[tf] = 0
			for _, rep := range replies[0] {
				var res contract.FeedBackfillResult
				if json.Unmarshal(rep.Result, &res) == nil {
					candles[tf] += res.Candles[tf]
				}
			}
			s, err = r.recompute(ctx, cmd, &st, series)
			steps = append(steps, s...)
		}
		if err != nil {
			var c *CancelledError
			if errors.As(err, &c) {
				return r.stopBackfill(ctx, cmd, &st, c, steps, backfillProgress{symbol: p.Symbol, candles: candles, done: i, timeframes: len(tfs), tf: tf, series: series})
			}
			return failed(steps, contract.ErrorOf(err))
		}
		progress(i+1, fmt.Sprintf("%s %s: %d candles from %s", p.Symbol, tf, candles[tf], tfFrom.Format(time.RFC3339)))
	}
	return succeeded(contract.ForceBackfillResult{Backfilled: true, Symbol: p.Symbol, Candles: candles}, steps)
}

// backfillProgress is how far a force-backfill got: the timeframes done
// (with candles) and the one in flight with its series.
type backfillProgress struct {
	symbol           string
	candles          map[contract.Timeframe]int
	done, timeframes int
	tf               contract.Timeframe
	series           contract.SeriesID
}

// stopBackfill ends a force-backfill that a pause or a cancel stopped: the
// feed stops the job of the timeframe in flight once its page is written
// (feed.cancel, on a context of its own, as cmd's has ended) and reports
// how far it got. When pages of that timeframe were written, its series is
// recomputed (indicators.recompute, also on a context of its own), so the
// indicators agree with the candles the cancelled job left in Redis; the
// result's progress says "recomputed" (or "recompute_failed" with why).
// The result keeps the candles written and says how far the backfill got.
func (r *Runner) stopBackfill(ctx context.Context, cmd Command, st *contract.DesiredState, c *CancelledError, steps []contract.Step, p backfillProgress) Outcome {
	ctx = context.WithoutCancel(ctx)
	s, replies, err := r.run(ctx, cmd, st, []stepSpec{{contract.SvcFeed, contract.VerbCancel}},
		contract.CancelArgs{CommandID: cmd.ID}, r.cfg.StepTimeout)
	steps = append(steps, s...)
	progress := &contract.BackfillProgress{TimeframesDone: p.done, Timeframes: p.timeframes, Candles: p.candles}
	if err != nil {
		progress.FeedNotConfirmed = contract.ErrorOf(err).Message
	}
	if p.done < p.timeframes {
		pages, total := 0, 0
		for _, rep := range replies {
			for _, reply := range rep {
				var res contract.FeedCancelResult
				if json.Unmarshal(reply.Result, &res) != nil {
					continue
				}
				for _, j := range res.Stopped {
					pages, total = pages+j.Pages, total+j.Total
					p.candles[p.tf] += j.Candles[p.tf]
				}
			}
		}
		stopped := &contract.StoppedTimeframe{Timeframe: p.tf, Pages: pages, PagesTotal: total}
		if pages > 0 {
			s, err := r.recompute(ctx, cmd, st, p.series)
			steps = append(steps, s...)
			if err != nil {
				stopped.RecomputeFailed = contract.ErrorOf(err).Message
			} else {
				stopped.Recomputed = p.tf
			}
		}
		progress.StoppedTimeframe = stopped
	}
	return Outcome{Status: contract.StatusCancelled, Steps: steps, Result: contract.ForceBackfillResult{Symbol: p.symbol,
		Candles: p.candles, CancelledBy: c.By, Progress: progress}}
}

// backfillJob is one timeframe of a force-backfill: the feed's backfill
// args and the series the indicators recompute after it.
type backfillJob struct {
	tf     contract.Timeframe
	args   contract.BackfillArgs
	series contract.SeriesID
}

// backfillJobs are the timeframes of force-backfill p, in order, with
// each one's range (from defaults to BackfillBars bars before to, to to
// now).
func (r *Runner) backfillJobs(cmd Command, p contract.ForceBackfillPayload, st contract.DesiredState) []backfillJob {
	from, to := p.Range()
	if to.IsZero() {
		to = r.cfg.Now().UTC().Truncate(time.Second)
	}
	var jobs []backfillJob
	for _, tf := range p.BackfillTimeframes() {
		tfFrom := from
		if tfFrom.IsZero() {
			tfFrom = to.Add(-time.Duration(r.cfg.BackfillBars) * tf.Duration())
		}
		jobs = append(jobs, backfillJob{tf: tf,
			series: contract.SeriesID{User: cmd.User, UserID: st.UserID, ExchangeID: st.ExchangeID, Symbol: p.Symbol, Timeframe: tf},
			args: contract.BackfillArgs{UserID: st.UserID, ExchangeID: st.ExchangeID, Symbol: p.Symbol,
				Timeframes: []contract.Timeframe{tf}, From: tfFrom, To: to, ProgressSubject: contract.ProgressSubject(cmd.User, cmd.ID)}})
	}
	return jobs
}

// recompute is a force-backfill's indicators.recompute step of series:
// its indicators are rebuilt from the candles the feed wrote.
func (r *Runner) recompute(ctx context.Context, cmd Command, st *contract.DesiredState, series contract.SeriesID) ([]contract.Step, error) {
	s, _, err := r.run(ctx, cmd, st, []stepSpec{{contract.SvcIndicators, contract.VerbRecompute}}, contract.RecomputeArgs{Series: series}, r.cfg.StepTimeout)
	return s, err
}
