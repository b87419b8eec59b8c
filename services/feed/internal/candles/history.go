package candles

// This file: history read into the products' bars (seeding a new
// subscription, gap fills after a reconnect) and the reconciles of closed
// bars against the source's history.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/source"
)

// reconcileJob is a closed bar of a product to read back from history
// once it is due.
type reconcileJob struct {
	product string
	tf      contract.Timeframe
	start   int64
	due     time.Time
}

// applyHistory makes bars read from history at fetched (UNIX µs), when
// the source's clock said now, the product's state where they are newer
// than what it holds: the source's own record wins over live aggregation.
// A bar that ended by now is closed; aggregated bars still open are rebuilt
// from their buckets instead.
func (e *Engine) applyHistory(p *product, bars []source.Bar, fetched int64, source string, now time.Time) {
	aggregated := e.caps.Aggregated()
	touched := map[contract.Timeframe]map[int64]bool{}
	for _, hb := range bars {
		if err := hb.Validate(); err != nil {
			e.stats.Malformed++
			e.cfg.Metrics.Malformed(e.ctx, "history")
			e.log.Warn("malformed history bar dropped", "err", err)
			continue
		}
		start := hb.Start.Unix()
		closed := !hb.End().After(now)
		if !closed && slices.Contains(aggregated, hb.Timeframe) {
			continue
		}
		b := p.barOf(hb.Timeframe, start)
		if b == nil {
			b = &bar{Bar: hb}
			p.put(b)
		} else if b.version >= fetched {
			continue
		}
		b.Bar = hb
		b.version = nextVersion(b.version, fetched)
		b.closed = closed
		b.source = source
		b.dirty = true
		if hb.Timeframe == e.caps.CandleTimeframe {
			for _, tf := range aggregated {
				if touched[tf] == nil {
					touched[tf] = map[int64]bool{}
				}
				touched[tf][tf.BarStart(hb.Start).Unix()] = true
			}
		}
	}
	// Aggregates over the touched buckets: those not yet emitted closed are
	// rebuilt, and closed if they ended by now (a seed's earlier bars of
	// the day).
	for tf, starts := range touched {
		for start := range starts {
			if start < p.closedBefore[tf] {
				continue
			}
			e.recompute(p, tf, start)
			if b := p.barOf(tf, start); b != nil && !b.closed && !b.End().After(now) {
				b.closed = true
				b.version = nextVersion(b.version, fetched)
				b.dirty = true
			}
		}
	}
}

// seedTimeframes are the timeframes whose open bars are read from history
// when a product is first subscribed: those built live.
func (e *Engine) seedTimeframes() []contract.Timeframe {
	tfs := slices.Clone(e.caps.TradeTimeframes)
	if e.caps.CandleTimeframe != "" && !slices.Contains(tfs, e.caps.CandleTimeframe) {
		tfs = append(tfs, e.caps.CandleTimeframe)
	}
	return tfs
}

// seed reads the open bars of a newly subscribed product at at (the
// source's clock when it was subscribed) from history, so its first live
// bars are complete, then replays the live events held back since.
func (e *Engine) seed(p *product, at time.Time) {
	fetched := nowMicros()
	var bars []source.Bar
	longest := contract.TF1m
	for _, tf := range e.caps.Timeframes {
		if tf.Duration() > longest.Duration() {
			longest = tf
		}
	}
	for _, tf := range e.seedTimeframes() {
		from := tf.BarStart(at)
		if tf == e.caps.CandleTimeframe {
			from = longest.BarStart(at) // every bucket of the open aggregates
		}
		if !at.After(from) {
			continue
		}
		got, err := e.src.History(e.ctx, p.name, tf, from, at)
		if err != nil {
			if e.ctx.Err() == nil {
				e.log.Warn("seeding from history failed; bars start from live data", "symbol", p.name, "tf", tf, "err", err)
			}
			continue
		}
		bars = append(bars, got...)
	}
	// The held-back clock events close the seeded bars that end meanwhile.
	e.finishSync(p, at, func() { e.applyHistory(p, bars, fetched, "history", at) })
}

// finishSync applies history under the lock, replays the held-back events
// and ends the sync (starting the next gap fill if one is waiting).
func (e *Engine) finishSync(p *product, at time.Time, apply func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.products[p.name] != p {
		return // unsubscribed meanwhile
	}
	apply()
	p.seededAt = at
	pending := p.pending
	p.pending = nil
	p.syncing--
	for _, ev := range pending {
		switch {
		case ev.trade != nil:
			e.applyTrade(p, *ev.trade, ev.observed)
		case ev.candle != nil:
			e.applyCandle(p, *ev.candle, ev.observed)
		default:
			e.applyClock(p, ev.clock, ev.observed)
		}
	}
	if !p.gapFrom.IsZero() && p.syncing == 0 {
		g := source.Gap{From: p.gapFrom, To: p.gapTo, Cause: p.gapCause}
		p.gapFrom, p.gapTo, p.gapCause = time.Time{}, time.Time{}, ""
		p.syncing++
		e.wg.Go(func() { e.fillGap(p, g) })
	}
}

func (e *Engine) onGap(g source.Gap) {
	e.mu.Lock()
	defer e.mu.Unlock()
	names := g.Products
	if len(names) == 0 {
		names = slices.Collect(maps.Keys(e.products))
	}
	for _, name := range names {
		p := e.products[name]
		if p == nil {
			continue
		}
		if p.syncing > 0 {
			// Widen the gap that waits for the running sync.
			if p.gapFrom.IsZero() || g.From.Before(p.gapFrom) {
				p.gapFrom = g.From
			}
			p.gapTo = latest(p.gapTo, g.To)
			p.gapCause = g.Cause
			continue
		}
		p.syncing++
		e.wg.Go(func() { e.fillGap(p, g) })
	}
}

// fillGap reads every timeframe of the missing interval from history and
// applies it; live events wait meanwhile.
func (e *Engine) fillGap(p *product, g source.Gap) {
	at := e.src.Now()
	fetched := nowMicros()
	var bars []source.Bar
	var failed error
	for _, tf := range e.caps.Timeframes {
		from := tf.BarStart(g.From)
		if floor := at.Add(-time.Duration(e.cfg.GapFillBars) * tf.Duration()); from.Before(floor) {
			from = tf.BarStart(floor)
		}
		if !at.After(from) {
			continue
		}
		got, err := e.src.History(e.ctx, p.name, tf, from, at)
		e.cfg.Metrics.BackfillPage(e.ctx, "gap")
		if err != nil {
			failed = errors.Join(failed, fmt.Errorf("%s: %w", tf, err))
			continue
		}
		bars = append(bars, got...)
	}
	e.finishSync(p, at, func() {
		e.applyHistory(p, bars, fetched, "rest", at)
		if failed != nil {
			e.stats.GapFillErrors++
			if e.ctx.Err() == nil {
				e.log.Warn("gap fill incomplete", "symbol", p.name, "from", g.From, "to", g.To, "cause", g.Cause, "err", failed)
			}
			return
		}
		took := time.Since(g.To)
		e.stats.GapFills++
		e.stats.LastGapFill = took
		e.stats.MaxGapFill = max(e.stats.MaxGapFill, took)
		e.cfg.Metrics.gapFilled(e.ctx, took.Seconds())
		e.log.Info("gap filled", "symbol", p.name, "from", g.From, "to", g.To, "cause", g.Cause, "bars", len(bars), "reconnect_to_filled", took)
	})
}

// reconcileLoop re-reads closed bars from history once they are due.
func (e *Engine) reconcileLoop(ctx context.Context) {
	tick := time.NewTicker(e.cfg.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, job := range e.dueReconciles() {
			e.reconcile(ctx, job)
		}
	}
}

func (e *Engine) dueReconciles() []reconcileJob {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	var due []reconcileJob
	e.reconciles = slices.DeleteFunc(e.reconciles, func(j reconcileJob) bool {
		if j.due.After(now) {
			return false
		}
		due = append(due, j)
		return true
	})
	return due
}

func (e *Engine) reconcile(ctx context.Context, job reconcileJob) {
	e.mu.Lock()
	_, subscribed := e.products[job.product]
	e.mu.Unlock()
	if !subscribed {
		return // paused or gone: no boundary REST
	}
	start := time.Unix(job.start, 0).UTC()
	fetched := nowMicros()
	bars, err := e.src.History(ctx, job.product, job.tf, start, start.Add(job.tf.Duration()))
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		e.stats.ReconcileErrors++
		if ctx.Err() == nil {
			e.log.Warn("boundary reconcile failed", "symbol", job.product, "tf", job.tf, "start", start, "err", err)
		}
		return
	}
	e.stats.Reconciles++
	if p := e.products[job.product]; p != nil {
		e.applyHistory(p, bars, fetched, "rest", e.src.Now())
	}
}
