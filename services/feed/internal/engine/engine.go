// Package engine turns a market data source into every user's candles: it
// holds one upstream subscription per product however many users watch it
// (reference-counted), builds the bars of every timeframe of each product
// once (from trades, exchange buckets and their aggregates, in progress and
// closed), fans each bar update out to the series of every user watching the
// product, writes them versioned to Redis and publishes them on JetStream,
// reconciles closed bars against the source's history when the source asks
// for it, backfills live-data gaps, and publishes order-book snapshots.
//
// # Versions
//
// A bar's version is the wall-clock time, in UNIX microseconds, at which
// the engine observed its state: a live update takes the time it was
// applied, a bar that closes takes the time the close was noticed, and a
// bar read from history takes the time the fetch started. Each version of a
// bar is above the previous one, so Redis's add-if-newer keeps the latest
// observation and a reconciled bar replaces the live one.
//
// # Syncing
//
// While a product's bars are read from history (its first subscription, a
// gap after a reconnect) its live events are held back; once the history is
// applied they are replayed, skipping trades older than the start of the
// fetch, which the history already holds. So a seeded bar is neither missing
// the trades before the subscription nor counting those after it twice.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/candlewriter"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/market"
)

// Defaults of Config.
const (
	DefaultFlushInterval = 100 * time.Millisecond
	// DefaultQuietInterval is how often in-progress bars that no live
	// rule needs are written.
	DefaultQuietInterval = 5 * time.Second
	DefaultBookInterval  = 250 * time.Millisecond
	DefaultBookDepth     = 50
	DefaultGapFillBars   = 300
	// maxPending bounds the live events held back while a product syncs.
	maxPending = 200_000
)

// Sentinel errors.
var (
	// ErrInvalidConfig means a Config field is missing or out of range.
	ErrInvalidConfig = errors.New("engine: invalid config")
	// ErrInvalidSubscriber means a subscriber's user, ids or symbol are invalid.
	ErrInvalidSubscriber = errors.New("engine: invalid subscriber")
)

// Config configures an Engine.
type Config struct {
	// Writer stores and publishes candles; required.
	Writer *candlewriter.Writer
	// NC publishes order-book snapshots; required.
	NC  *nats.Conn
	Log *slog.Logger
	// Metrics may be nil.
	Metrics *Metrics
	// FlushInterval is how often dirty bars are written.
	FlushInterval time.Duration
	// BookInterval is the least time between two book snapshots of a product.
	BookInterval time.Duration
	// BookDepth is how many levels per side a book snapshot carries.
	BookDepth int
	// GapFillBars bounds how many bars per timeframe a gap fill reads.
	GapFillBars int
	// StopTimeout bounds the last flush once Run's context ends (default
	// 30s): the caller's shutdown budget.
	StopTimeout time.Duration
	// QuietInterval is how often a subscriber gets the in-progress bars
	// of the timeframes outside its Live set (default
	// DefaultQuietInterval); closed bars, and in-progress bars of its Live
	// timeframes, go out every FlushInterval.
	QuietInterval time.Duration
}

// Timeframes is a set of timeframes.
type Timeframes uint8

// TimeframesOf is the set of tfs (timeframes outside contract.Timeframes
// are left out).
func TimeframesOf(tfs ...contract.Timeframe) Timeframes {
	var s Timeframes
	for _, tf := range tfs {
		if i := slices.Index(contract.Timeframes, tf); i >= 0 {
			s |= 1 << i
		}
	}
	return s
}

// Has reports whether tf is in s.
func (s Timeframes) Has(tf contract.Timeframe) bool {
	i := slices.Index(contract.Timeframes, tf)
	return i >= 0 && s&(1<<i) != 0
}

// Subscriber is one user's interest in one symbol.
type Subscriber struct {
	User       string
	UserID     int64
	ExchangeID int64
	Symbol     string
	// Book asks for order-book snapshots too (scalper-orderbook mode).
	Book bool
	// Live are the timeframes whose in-progress bars the user's live
	// rules on the symbol need at once; the others' in-progress bars are
	// coalesced to one write per Config.QuietInterval.
	Live Timeframes
}

// Series is the subscriber's series of timeframe tf.
func (s Subscriber) Series(tf contract.Timeframe) contract.SeriesID {
	return contract.SeriesID{User: s.User, UserID: s.UserID, ExchangeID: s.ExchangeID, Symbol: s.Symbol, Timeframe: tf}
}

type subKey struct {
	user       string
	exchangeID int64
}

// bar is the engine's state of one bar of a product.
type bar struct {
	market.Bar
	version int64
	closed  bool
	dirty   bool
	source  string
	// behind are the subscribers that were not sent the bar's last
	// in-progress update (it is outside their Live set).
	behind map[subKey]bool
}

// pendingEvent is a live event held back while its product syncs.
type pendingEvent struct {
	trade    *market.Trade
	candle   *market.Bar
	clock    time.Time
	observed int64
}

// product is the state of one subscribed product.
type product struct {
	name     string
	subs     map[subKey]Subscriber
	bookSubs int
	series   map[contract.Timeframe]map[int64]*bar
	// closedBefore[tf] is the start of tf's open bar: bars that start
	// earlier are closed, and live data for them is late.
	closedBefore map[contract.Timeframe]int64
	// seededAt: trades before it are already in the bars (history).
	seededAt time.Time
	syncing  int
	pending  []pendingEvent
	gapFrom  time.Time // a gap waiting for the running sync, if not zero
	gapTo    time.Time
	gapCause string

	book          orderBook
	bookDirty     bool
	bookPublished time.Time

	lastTrade, lastCandle, lastBook time.Time
	trades, candles, late           uint64
}

func newProduct(name string) *product {
	return &product{
		name:         name,
		subs:         map[subKey]Subscriber{},
		series:       map[contract.Timeframe]map[int64]*bar{},
		closedBefore: map[contract.Timeframe]int64{},
		book:         newOrderBook(),
	}
}

// Engine builds and distributes candles. Its methods are safe for
// concurrent use; the source calls its Sink methods.
type Engine struct {
	cfg    Config
	src    market.Source
	caps   market.Caps
	log    *slog.Logger
	tracer trace.Tracer
	ctx    context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup

	flushing   sync.Mutex // held by Flush
	mu         sync.Mutex
	products   map[string]*product
	reconciles []reconcileJob
	retry      []contract.Candle // candles Redis refused, for the next flush
	quietAt    time.Time         // when in-progress bars outside Live sets were last written
	stats      Stats
}

// Stats are the engine's counters. They only grow, except the gap fill
// durations.
type Stats struct {
	Trades, Candles, BookUpdates uint64
	Malformed                    uint64
	Late                         uint64
	CandlesWritten               uint64
	WriteErrors                  uint64
	Reconciles, ReconcileErrors  uint64
	GapFills, GapFillErrors      uint64
	BooksPublished               uint64
	// LastGapFill is how long the last gap fill took from the moment live
	// data was back (reconnect) to the gap being written.
	LastGapFill time.Duration
	// MaxGapFill is the longest such time.
	MaxGapFill time.Duration
	// PendingReconciles is how many closed bars wait to be read back.
	PendingReconciles int
}

type reconcileJob struct {
	product string
	tf      contract.Timeframe
	start   int64
	due     time.Time
}

// New builds an engine over the source that newSource returns for the
// engine's Sink.
func New(cfg Config, newSource func(market.Sink) (market.Source, error)) (*Engine, error) {
	if cfg.Writer == nil || cfg.NC == nil {
		return nil, fmt.Errorf("%w: Writer and NC are required", ErrInvalidConfig)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.BookInterval <= 0 {
		cfg.BookInterval = DefaultBookInterval
	}
	if cfg.BookDepth <= 0 {
		cfg.BookDepth = DefaultBookDepth
	}
	if cfg.BookDepth > contract.MaxBookLevels {
		return nil, fmt.Errorf("%w: BookDepth %d is above %d", ErrInvalidConfig, cfg.BookDepth, contract.MaxBookLevels)
	}
	if cfg.GapFillBars <= 0 {
		cfg.GapFillBars = DefaultGapFillBars
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = flushTimeout
	}
	if cfg.QuietInterval <= 0 {
		cfg.QuietInterval = DefaultQuietInterval
	}
	e := &Engine{cfg: cfg, log: cfg.Log, products: map[string]*product{}, tracer: otel.Tracer(MeterName)}
	e.ctx, e.stop = context.WithCancel(context.Background())
	src, err := newSource(sink{e})
	if err != nil {
		return nil, err
	}
	e.src, e.caps = src, src.Caps()
	return e, nil
}

// Source is the engine's source.
func (e *Engine) Source() market.Source { return e.src }

// Run runs the source, the flusher and the reconciler until ctx ends, then
// waits for the engine's goroutines.
func (e *Engine) Run(ctx context.Context) error {
	defer e.wg.Wait()
	defer e.stop()
	var srcErr error
	var wg sync.WaitGroup
	wg.Go(func() { srcErr = e.src.Run(ctx) })
	wg.Go(func() { e.flushLoop(ctx) })
	if e.caps.Reconcile {
		wg.Go(func() { e.reconcileLoop(ctx) })
	}
	wg.Wait()
	return srcErr
}

// Attach makes sub's series receive the bars of sub.Symbol (and its book
// when sub.Book). Attaching the same user, exchange and symbol again only
// updates the book flag; the upstream subscription is shared by every
// subscriber of the product.
//
// It returns the source's clock at the attach: every bar of the product
// still open then reaches sub's series from the engine (a new product's
// open bars are seeded from history up to that time), so a caller filling
// sub's series from history needs only the bars that ended by then.
func (e *Engine) Attach(sub Subscriber) (time.Time, error) {
	if err := sub.Series(contract.TF1m).Validate(); err != nil {
		return time.Time{}, fmt.Errorf("%w: %w", ErrInvalidSubscriber, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	at := e.src.Now()
	p := e.products[sub.Symbol]
	if p == nil {
		if err := e.src.Subscribe(market.ChannelBars, sub.Symbol); err != nil {
			return at, err
		}
		p = newProduct(sub.Symbol)
		p.syncing++
		e.products[sub.Symbol] = p
		e.wg.Go(func() { e.seed(p, at) })
	}
	key := subKey{sub.User, sub.ExchangeID}
	old, had := p.subs[key]
	p.subs[key] = sub
	switch {
	case sub.Book && !(had && old.Book):
		if p.bookSubs++; p.bookSubs == 1 {
			if err := e.src.Subscribe(market.ChannelBook, sub.Symbol); err != nil {
				p.bookSubs--
				sub.Book = false
				p.subs[key] = sub
				return at, err
			}
		}
	case !sub.Book && had && old.Book:
		e.dropBookLocked(p)
	}
	return at, nil
}

// Detach stops sending sub's symbol to the user's series; the last
// subscriber of a product unsubscribes it upstream and drops its state
// (and its pending reconciliations).
func (e *Engine) Detach(user string, exchangeID int64, symbol string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.products[symbol]
	if p == nil {
		return
	}
	key := subKey{user, exchangeID}
	old, had := p.subs[key]
	if !had {
		return
	}
	delete(p.subs, key)
	if old.Book {
		e.dropBookLocked(p)
	}
	if len(p.subs) == 0 {
		if err := e.src.Unsubscribe(market.ChannelBars, symbol); err != nil {
			e.log.Warn("unsubscribe failed", "symbol", symbol, "err", err)
		}
		delete(e.products, symbol)
		e.reconciles = slices.DeleteFunc(e.reconciles, func(j reconcileJob) bool { return j.product == symbol })
	}
}

func (e *Engine) dropBookLocked(p *product) {
	if p.bookSubs--; p.bookSubs == 0 {
		if err := e.src.Unsubscribe(market.ChannelBook, p.name); err != nil {
			e.log.Warn("book unsubscribe failed", "symbol", p.name, "err", err)
		}
		p.book = newOrderBook()
		p.bookDirty = false
	}
}

// attachedLocked reports whether the series' user still subscribes its symbol.
func (e *Engine) attachedLocked(s contract.SeriesID) bool {
	p := e.products[s.Symbol]
	if p == nil {
		return false
	}
	sub, ok := p.subs[subKey{s.User, s.ExchangeID}]
	return ok && sub.UserID == s.UserID
}

// Stats returns the counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.stats
	st.PendingReconciles = len(e.reconciles)
	return st
}

// ProductStatus is one product's state for the status verb.
type ProductStatus struct {
	Symbol      string `json:"symbol"`
	Subscribers int    `json:"subscribers"`
	Book        bool   `json:"book"`
	Syncing     bool   `json:"syncing"`
	// LastTrade, LastCandle and LastBook are when live data last arrived
	// (wall clock); zero when none did.
	LastTrade  time.Time `json:"last_trade,omitzero"`
	LastCandle time.Time `json:"last_candle,omitzero"`
	LastBook   time.Time `json:"last_book,omitzero"`
	// LagMs is how long ago the last live data arrived, in milliseconds.
	LagMs   int64  `json:"lag_ms"`
	Trades  uint64 `json:"trades"`
	Candles uint64 `json:"candles"`
	Late    uint64 `json:"late"`
}

// Products returns the state of every subscribed product, by symbol.
func (e *Engine) Products() map[string]ProductStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	out := make(map[string]ProductStatus, len(e.products))
	for name, p := range e.products {
		last := latest(p.lastTrade, p.lastCandle, p.lastBook)
		lag := int64(-1)
		if !last.IsZero() {
			lag = now.Sub(last).Milliseconds()
		}
		out[name] = ProductStatus{Symbol: name, Subscribers: len(p.subs), Book: p.bookSubs > 0, Syncing: p.syncing > 0,
			LastTrade: p.lastTrade, LastCandle: p.lastCandle, LastBook: p.lastBook, LagMs: lag,
			Trades: p.trades, Candles: p.candles, Late: p.late}
	}
	return out
}

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

// sink adapts the engine to market.Sink without exporting the methods on
// Engine itself.
type sink struct{ e *Engine }

// Trade implements market.Sink.
func (s sink) Trade(t market.Trade) { s.e.onTrade(t) }

// Candle implements market.Sink.
func (s sink) Candle(b market.Bar) { s.e.onCandle(b) }

// Book implements market.Sink.
func (s sink) Book(u market.BookUpdate) { s.e.onBook(u) }

// Clock implements market.Sink.
func (s sink) Clock(now time.Time) { s.e.onClock(now) }

// CandleThenClock implements market.Sink.
func (s sink) CandleThenClock(b market.Bar, now time.Time) { s.e.onCandleThenClock(b, now) }

// Gap implements market.Sink.
func (s sink) Gap(g market.Gap) { s.e.onGap(g) }

// Malformed implements market.Sink.
func (s sink) Malformed(err error) { s.e.onMalformed("frame", err) }

func (e *Engine) onMalformed(kind string, err error) {
	e.mu.Lock()
	e.stats.Malformed++
	e.mu.Unlock()
	e.cfg.Metrics.Malformed(e.ctx, kind)
	e.log.Warn("malformed market data dropped", "kind", kind, "err", err)
}

func (e *Engine) onTrade(t market.Trade) {
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

func (e *Engine) onCandle(b market.Bar) {
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
func (e *Engine) onCandleThenClock(b market.Bar, now time.Time) {
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
func (e *Engine) validCandle(b market.Bar) bool {
	if err := b.Validate(); err != nil {
		e.onMalformed("candle", err)
		return false
	}
	if b.Timeframe != e.caps.CandleTimeframe {
		e.onMalformed("candle", fmt.Errorf("%w: candle timeframe %s, the source sends %q", market.ErrMalformed, b.Timeframe, e.caps.CandleTimeframe))
		return false
	}
	return true
}

func (e *Engine) candleLocked(b market.Bar, observed int64) {
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

func (e *Engine) onBook(u market.BookUpdate) {
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

func (e *Engine) applyTrade(p *product, t market.Trade, observed int64) {
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
			b = &bar{Bar: market.Bar{Product: p.name, Timeframe: tf, Start: startT, Open: t.Price, High: t.Price, Low: t.Price, Close: t.Price}, source: e.src.Name()}
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

func (e *Engine) applyCandle(p *product, c market.Bar, observed int64) {
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
	var parts []market.Bar
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
	agg := market.Aggregate(p.name, tf, parts)[0]
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

// applyHistory makes bars read from history at fetched (UNIX µs), when
// the source's clock said now, the product's state where they are newer
// than what it holds: the source's own record wins over live aggregation.
// A bar that ended by now is closed; aggregated bars still open are rebuilt
// from their buckets instead.
func (e *Engine) applyHistory(p *product, bars []market.Bar, fetched int64, source string, now time.Time) {
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
	var bars []market.Bar
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
		g := market.Gap{From: p.gapFrom, To: p.gapTo, Cause: p.gapCause}
		p.gapFrom, p.gapTo, p.gapCause = time.Time{}, time.Time{}, ""
		p.syncing++
		e.wg.Go(func() { e.fillGap(p, g) })
	}
}

func (e *Engine) onGap(g market.Gap) {
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
func (e *Engine) fillGap(p *product, g market.Gap) {
	at := e.src.Now()
	fetched := nowMicros()
	var bars []market.Bar
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
