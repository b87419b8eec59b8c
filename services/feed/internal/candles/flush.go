package candles

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/candlewriter"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/source"
)

// flushTimeout bounds one flush's Redis writes and publishes.
const flushTimeout = 30 * time.Second

// maxRetry bounds the candles kept for the next flush after Redis failed.
const maxRetry = 100_000

// flushLoop writes dirty bars and publishes due book snapshots every
// FlushInterval, and once more, within StopTimeout, when ctx ends.
func (e *Engine) flushLoop(ctx context.Context) {
	tick := time.NewTicker(e.cfg.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), e.cfg.StopTimeout)
			e.Flush(fctx)
			cancel()
			return
		case <-tick.C:
			fctx, cancel := context.WithTimeout(ctx, flushTimeout)
			e.Flush(fctx)
			cancel()
		}
	}
}

// Flush writes every dirty bar to the series of every subscriber of its
// product and publishes the written versions, then publishes the book
// snapshots that are due. The flush loop calls it; tests may too.
func (e *Engine) Flush(ctx context.Context) {
	e.flushing.Lock()
	defer e.flushing.Unlock()
	candles, books := e.collect()
	e.mu.Lock()
	if len(e.retry) > 0 {
		candles = append(e.retry, candles...)
		e.retry = nil
	}
	e.mu.Unlock()
	if len(candles) > 0 {
		ctx, span := e.tracer.Start(ctx, "feed flush", trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(attribute.Int("vigil.candles", len(candles))))
		written, err := e.cfg.Writer.Write(ctx, candles)
		span.End()
		n := 0
		for _, w := range written {
			if w {
				n++
			}
		}
		e.mu.Lock()
		e.stats.CandlesWritten += uint64(n)
		if err != nil {
			e.stats.WriteErrors++
		}
		if errors.Is(err, candlewriter.ErrStore) {
			// Redis did not take them: try again next flush (a versioned
			// write of what was stored meanwhile changes nothing).
			e.retry = append(e.retry, candles[max(0, len(candles)-maxRetry):]...)
		}
		e.mu.Unlock()
		if err != nil {
			e.log.WarnContext(ctx, "writing candles failed", "candles", len(candles), "err", err)
		}
	}
	for _, b := range books {
		data, err := json.Marshal(b)
		if err != nil {
			continue
		}
		if err := e.cfg.NC.Publish(contract.BookSubject(b.User, b.ExchangeID, b.Symbol), data); err != nil {
			e.log.WarnContext(ctx, "book publish failed", "symbol", b.Symbol, "err", err)
		}
	}
}

// Quiesce waits for the flush in progress, if any: after Detach and
// Quiesce nothing more is written for the detached subscriber.
func (e *Engine) Quiesce() {
	e.flushing.Lock()
	defer e.flushing.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	// Candles kept for a retry belong to subscribers that may be gone.
	e.retry = slices.DeleteFunc(e.retry, func(c contract.Candle) bool { return !e.attachedLocked(c.SeriesID) })
}

// collect takes the dirty bars as candles of every subscriber, prunes bars
// no longer needed, and builds the due book snapshots.
func (e *Engine) collect() ([]contract.Candle, []contract.BookSnapshot) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var candles []contract.Candle
	var books []contract.BookSnapshot
	now := time.Now()
	quiet := now.Sub(e.quietAt) >= e.cfg.QuietInterval
	if quiet {
		e.quietAt = now
	}
	keepFrom := e.bucketHorizon()
	for _, p := range e.products {
		subs := slices.SortedFunc(maps.Values(p.subs), func(a, b Subscriber) int {
			return cmp.Or(cmp.Compare(a.User, b.User), cmp.Compare(a.ExchangeID, b.ExchangeID))
		})
		for tf, series := range p.series {
			for start, b := range series {
				if b.dirty || len(b.behind) > 0 {
					for _, sub := range subs {
						if c, ok := e.due(sub, tf, b, quiet); ok {
							candles = append(candles, c)
						}
					}
					b.dirty = false
				}
				if b.closed && !(tf == e.caps.CandleTimeframe && start >= keepFrom(p)) {
					delete(series, start)
				}
			}
		}
		if p.bookDirty && p.bookSubs > 0 && now.Sub(p.bookPublished) >= e.cfg.BookInterval {
			bids, asks := p.book.top(e.cfg.BookDepth)
			for _, sub := range subs {
				if sub.Book {
					books = append(books, contract.BookSnapshot{User: sub.User, ExchangeID: sub.ExchangeID, Symbol: sub.Symbol, Time: now.UTC(), Bids: bids, Asks: asks})
				}
			}
			e.stats.BooksPublished += uint64(len(books))
			p.bookDirty = false
			p.bookPublished = now
		}
	}
	// In series and time order, so a bar's close goes out before the next
	// bar's first update.
	slices.SortFunc(candles, func(a, b contract.Candle) int {
		return cmp.Or(cmp.Compare(a.User, b.User), cmp.Compare(a.ExchangeID, b.ExchangeID), cmp.Compare(a.Symbol, b.Symbol),
			cmp.Compare(a.Timeframe.Duration(), b.Timeframe.Duration()), cmp.Compare(a.Start, b.Start))
	})
	return candles, books
}

// due returns sub's candle of bar b when sub is to get it now: a bar
// changed since the last flush or one sub was not sent, at once when it
// is closed or in sub's Live set, otherwise in a quiet round only.
func (e *Engine) due(sub Subscriber, tf contract.Timeframe, b *bar, quiet bool) (contract.Candle, bool) {
	key := subKey{sub.User, sub.ExchangeID}
	if !b.dirty && !b.behind[key] {
		return contract.Candle{}, false
	}
	if !b.closed && !quiet && !sub.Live.Has(tf) {
		if b.behind == nil {
			b.behind = map[subKey]bool{}
		}
		b.behind[key] = true
		return contract.Candle{}, false
	}
	delete(b.behind, key)
	return e.candleOf(sub, b), true
}

// bucketHorizon returns, per product, the oldest candle bucket still needed
// by an open aggregated bar.
func (e *Engine) bucketHorizon() func(*product) int64 {
	aggregated := e.caps.Aggregated()
	return func(p *product) int64 {
		horizon := int64(1<<62 - 1)
		for _, tf := range aggregated {
			horizon = min(horizon, p.closedBefore[tf])
		}
		return horizon
	}
}

func (e *Engine) candleOf(sub Subscriber, b *bar) contract.Candle {
	return contract.Candle{
		SeriesID: sub.Series(b.Timeframe),
		Start:    b.Start.Unix(),
		Open:     b.Open, High: b.High, Low: b.Low, Close: b.Close, Volume: b.Volume,
		Closed:  b.closed,
		Version: b.version,
		Source:  b.source,
	}
}

// orderBook is a product's level2 book: absolute quantity by price.
type orderBook struct {
	bids, asks map[float64]float64
}

func newOrderBook() orderBook {
	return orderBook{bids: map[float64]float64{}, asks: map[float64]float64{}}
}

func (b *orderBook) apply(u source.BookUpdate) {
	if u.Snapshot {
		clear(b.bids)
		clear(b.asks)
	}
	for _, side := range []struct {
		levels []source.Level
		book   map[float64]float64
	}{{u.Bids, b.bids}, {u.Asks, b.asks}} {
		for _, l := range side.levels {
			if l.Quantity == 0 {
				delete(side.book, l.Price)
			} else {
				side.book[l.Price] = l.Quantity
			}
		}
	}
}

// top returns the best n levels of each side, best first.
func (b *orderBook) top(n int) (bids, asks []contract.BookLevel) {
	pick := func(side map[float64]float64, better func(a, b float64) int) []contract.BookLevel {
		prices := slices.SortedFunc(maps.Keys(side), better)
		prices = prices[:min(n, len(prices))]
		out := make([]contract.BookLevel, len(prices))
		for i, p := range prices {
			out[i] = contract.BookLevel{p, side[p]}
		}
		return out
	}
	bids = pick(b.bids, func(x, y float64) int { return cmp.Compare(y, x) })
	asks = pick(b.asks, func(x, y float64) int { return cmp.Compare(x, y) })
	return bids, asks
}
