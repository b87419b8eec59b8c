// Package candles turns a market data source into every user's candles: it
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
package candles

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/candlewriter"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/source"
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
	source.Bar
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
	trade    *source.Trade
	candle   *source.Bar
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
	src    source.Source
	caps   source.Caps
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

// New builds an engine over the source that newSource returns for the
// engine's Sink.
func New(cfg Config, newSource func(source.Sink) (source.Source, error)) (*Engine, error) {
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
func (e *Engine) Source() source.Source { return e.src }

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
		if err := e.src.Subscribe(source.ChannelBars, sub.Symbol); err != nil {
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
			if err := e.src.Subscribe(source.ChannelBook, sub.Symbol); err != nil {
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
		if err := e.src.Unsubscribe(source.ChannelBars, symbol); err != nil {
			e.log.Warn("unsubscribe failed", "symbol", symbol, "err", err)
		}
		delete(e.products, symbol)
		e.reconciles = slices.DeleteFunc(e.reconciles, func(j reconcileJob) bool { return j.product == symbol })
	}
}

func (e *Engine) dropBookLocked(p *product) {
	if p.bookSubs--; p.bookSubs == 0 {
		if err := e.src.Unsubscribe(source.ChannelBook, p.name); err != nil {
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
