package candles

// This file: the source's events (trades, exchange candles, clock, book)
// applied to the products' bars, and the bar versions.

import (
	"fmt"
	"slices"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/source"
)

// latest is the latest of ts (zero when all are zero).
func latest(ts ...time.Time) time.Time {
	var m time.Time
	for _, t := range ts {
		if t.After(m) {
			m = t
		}
	}
	return m
}

// nowMicros is the wall clock in UNIX microseconds, the unit of versions.
func nowMicros() int64 { return time.Now().UnixMicro() }

// nextVersion is a version above current and at least observed.
func nextVersion(current, observed int64) int64 {
	if observed > current {
		return observed
	}
	return current + 1
}

// sink adapts the engine to source.Sink without exporting the methods on
// Engine itself.
type sink struct{ e *Engine }

// Trade implements source.Sink.
func (s sink) Trade(t source.Trade) { s.e.onTrade(t) }

// Candle implements source.Sink.
func (s sink) Candle(b source.Bar) { s.e.onCandle(b) }

// Book implements source.Sink.
func (s sink) Book(u source.BookUpdate) { s.e.onBook(u) }

// Clock implements source.Sink.
func (s sink) Clock(now time.Time) { s.e.onClock(now) }

// CandleThenClock implements source.Sink.
func (s sink) CandleThenClock(b source.Bar, now time.Time) { s.e.onCandleThenClock(b, now) }

// Gap implements source.Sink.
func (s sink) Gap(g source.Gap) { s.e.onGap(g) }

// Malformed implements source.Sink.
func (s sink) Malformed(err error) { s.e.onMalformed("frame", err) }

func (e *Engine) onMalformed(kind string, err error) {
	e.mu.Lock()
	e.stats.Malformed++
	e.mu.Unlock()
	e.cfg.Metrics.Malformed(e.ctx, kind)
	e.log.Warn("malformed market data dropped", "kind", kind, "err", err)
}

func (e *Engine) onTrade(t source.Trade) {
	if err := t.Validate(); err != nil {
		e.onMalformed("trade", err)
		return
	}
	observed := nowMicros()
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.products[t.Product]
	if p == nil {
		return
	}
	p.lastTrade = time.Now()
	if p.syncing > 0 {
		p.hold(pendingEvent{trade: &t, observed: observed})
		return
	}
	e.applyTrade(p, t, observed)
}

func (e *Engine) onCandle(b source.Bar) {
	if !e.validCandle(b) {
		return
	}
	observed := nowMicros()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.candleLocked(b, observed)
}

// onCandleThenClock applies a candle and the clock under one lock, so no
// flush collects the bucket between the two.
func (e *Engine) onCandleThenClock(b source.Bar, now time.Time) {
	valid := e.validCandle(b)
	observed := nowMicros()
	e.mu.Lock()
	defer e.mu.Unlock()
	if valid {
		e.candleLocked(b, observed)
	}
	e.clockLocked(now, observed)
}

// validCandle checks a source's candle, counting it as malformed if not.
func (e *Engine) validCandle(b source.Bar) bool {
	if err := b.Validate(); err != nil {
		e.onMalformed("candle", err)
		return false
	}
	if b.Timeframe != e.caps.CandleTimeframe {
		e.onMalformed("candle", fmt.Errorf("%w: candle timeframe %s, the source sends %q", source.ErrMalformed, b.Timeframe, e.caps.CandleTimeframe))
		return false
	}
	return true
}

func (e *Engine) candleLocked(b source.Bar, observed int64) {
	p := e.products[b.Product]
	if p == nil {
		return
	}
	p.lastCandle = time.Now()
	if p.syncing > 0 {
		p.hold(pendingEvent{candle: &b, observed: observed})
		return
	}
	e.applyCandle(p, b, observed)
}

func (e *Engine) onClock(now time.Time) {
	observed := nowMicros()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.clockLocked(now, observed)
}

func (e *Engine) clockLocked(now time.Time, observed int64) {
	for _, p := range e.products {
		if p.syncing > 0 {
			p.hold(pendingEvent{clock: now, observed: observed})
			continue
		}
		e.applyClock(p, now, observed)
	}
}

func (e *Engine) onBook(u source.BookUpdate) {
	if err := u.Validate(); err != nil {
		e.onMalformed("book", err)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.products[u.Product]
	if p == nil || p.bookSubs == 0 {
		return
	}
	e.stats.BookUpdates++
	p.lastBook = time.Now()
	p.book.apply(u)
	p.bookDirty = true
}

// hold keeps a live event for after the sync; past maxPending the oldest
// events are dropped (the sync's history and the next reconcile cover them).
func (p *product) hold(ev pendingEvent) {
	if len(p.pending) >= maxPending {
		p.pending = p.pending[1:]
	}
	p.pending = append(p.pending, ev)
}

func (p *product) barOf(tf contract.Timeframe, start int64) *bar {
	s := p.series[tf]
	if s == nil {
		s = map[int64]*bar{}
		p.series[tf] = s
	}
	return s[start]
}

func (p *product) put(b *bar) {
	s := p.series[b.Timeframe]
	if s == nil {
		s = map[int64]*bar{}
		p.series[b.Timeframe] = s
	}
	s[b.Start.Unix()] = b
}

func (e *Engine) applyTrade(p *product, t source.Trade, observed int64) {
	if t.Time.Before(p.seededAt) {
		return // the seeded history holds it
	}
	e.stats.Trades++
	p.trades++
	for _, tf := range e.caps.TradeTimeframes {
		startT := tf.BarStart(t.Time)
		start := startT.Unix()
		if start < p.closedBefore[tf] {
			e.lateLocked(p)
			continue
		}
		b := p.barOf(tf, start)
		if b != nil && b.closed {
			e.lateLocked(p)
			continue
		}
		if b == nil {
			b = &bar{Bar: source.Bar{Product: p.name, Timeframe: tf, Start: startT, Open: t.Price, High: t.Price, Low: t.Price, Close: t.Price}, source: e.src.Name()}
			p.put(b)
		}
		b.High = max(b.High, t.Price)
		b.Low = min(b.Low, t.Price)
		b.Close = t.Price
		b.Volume += t.Size
		b.version = nextVersion(b.version, observed)
		b.source = e.src.Name()
		b.dirty = true
	}
}

func (e *Engine) applyCandle(p *product, c source.Bar, observed int64) {
	e.stats.Candles++
	p.candles++
	start := c.Start.Unix()
	if start < p.closedBefore[c.Timeframe] {
		e.lateLocked(p)
		return
	}
	b := p.barOf(c.Timeframe, start)
	if b != nil && b.closed {
		e.lateLocked(p)
		return
	}
	if b == nil {
		b = &bar{Bar: c}
		p.put(b)
	}
	b.Bar = c
	b.version = nextVersion(b.version, observed)
	b.source = e.src.Name()
	b.dirty = true
	for _, tf := range e.caps.Aggregated() {
		if aggStart := tf.BarStart(c.Start).Unix(); aggStart >= p.closedBefore[tf] {
			e.recompute(p, tf, aggStart)
		}
	}
}

func (e *Engine) lateLocked(p *product) {
	e.stats.Late++
	p.late++
	e.cfg.Metrics.late(e.ctx)
}

// recompute rebuilds the aggregated bar of tf at start from the candle
// buckets inside it.
func (e *Engine) recompute(p *product, tf contract.Timeframe, start int64) {
	base := e.caps.CandleTimeframe
	end := start + int64(tf.Duration()/time.Second)
	var parts []source.Bar
	var version int64
	for s, b := range p.series[base] {
		if s >= start && s < end {
			parts = append(parts, b.Bar)
			version = max(version, b.version)
		}
	}
	if len(parts) == 0 {
		return
	}
	b := p.barOf(tf, start)
	if b != nil && b.closed {
		return // closed aggregates change only by history
	}
	agg := source.Aggregate(p.name, tf, parts)[0]
	if b == nil {
		b = &bar{Bar: agg}
		p.put(b)
	}
	if b.Bar == agg && b.version >= version {
		return
	}
	b.Bar = agg
	b.version = nextVersion(b.version, version)
	b.source = e.src.Name()
	b.dirty = true
}

// applyClock closes every bar that ends at or before now.
func (e *Engine) applyClock(p *product, now time.Time, observed int64) {
	for _, tf := range e.caps.Timeframes {
		open := tf.BarStart(now).Unix()
		if open <= p.closedBefore[tf] {
			continue
		}
		aggregated := slices.Contains(e.caps.Aggregated(), tf)
		for start, b := range p.series[tf] {
			if start >= open || b.closed {
				continue
			}
			if aggregated {
				e.recompute(p, tf, start)
			}
			b.closed = true
			b.version = nextVersion(b.version, observed)
			b.dirty = true
			if e.caps.Reconcile {
				e.reconciles = append(e.reconciles, reconcileJob{product: p.name, tf: tf, start: start, due: time.Now().Add(e.caps.ReconcileDelay)})
			}
		}
		p.closedBefore[tf] = open
	}
}
