// Package source is the feed's vocabulary for market data, independent of
// where it comes from: bars, trades and order-book updates of a product,
// the Sink a source delivers them to, and the Source interface the feed
// runs (a simulator, Coinbase, or a replayed file).
package source

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"vigil.dev/pkg/contract"
)

// Sentinel errors.
var (
	// ErrMalformed is wrapped by every validation failure of market data.
	ErrMalformed = errors.New("malformed market data")
	// ErrUnknownProduct means a source has no data for a product.
	ErrUnknownProduct = errors.New("unknown product")
)

// Channel is what a user needs of a product: its bars, or its order book.
type Channel string

// The channels a source subscribes.
const (
	// ChannelBars is everything bars are built from (trades, exchange candles).
	ChannelBars Channel = "bars"
	// ChannelBook is the level2 order book.
	ChannelBook Channel = "book"
)

// Bar is one OHLCV bar of a product at a timeframe.
type Bar struct {
	Product   string
	Timeframe contract.Timeframe
	// Start is the bar's UTC-aligned start.
	Start                          time.Time
	Open, High, Low, Close, Volume float64
}

// End is when the bar's time is over.
func (b Bar) End() time.Time { return b.Start.Add(b.Timeframe.Duration()) }

// Validate checks the product, the timeframe and alignment, and that the
// prices are finite, not negative and consistent (low ≤ open, close ≤
// high). Errors wrap ErrMalformed.
func (b Bar) Validate() error {
	if err := contract.ValidateSymbol(b.Product); err != nil {
		return fmt.Errorf("%w: bar product: %v", ErrMalformed, err)
	}
	if err := b.Timeframe.Validate(); err != nil {
		return fmt.Errorf("%w: bar timeframe: %v", ErrMalformed, err)
	}
	if !b.Start.Equal(b.Timeframe.BarStart(b.Start)) || b.Start.Unix() <= 0 {
		return fmt.Errorf("%w: bar start %v is not a positive %s boundary", ErrMalformed, b.Start, b.Timeframe)
	}
	for _, v := range [...]float64{b.Open, b.High, b.Low, b.Close, b.Volume} {
		if !finiteNonNegative(v) {
			return fmt.Errorf("%w: bar %s %s %v: value %v is not a finite non-negative number", ErrMalformed, b.Product, b.Timeframe, b.Start, v)
		}
	}
	if b.Low > b.High || b.Open < b.Low || b.Open > b.High || b.Close < b.Low || b.Close > b.High {
		return fmt.Errorf("%w: bar %s %s %v: open %v high %v low %v close %v are inconsistent", ErrMalformed, b.Product, b.Timeframe, b.Start, b.Open, b.High, b.Low, b.Close)
	}
	return nil
}

func finiteNonNegative(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) && v >= 0 }

// Trade is one trade of a product.
type Trade struct {
	Product     string
	Price, Size float64
	Time        time.Time
}

// Validate checks the product, a positive finite price, a finite
// non-negative size and a time. Errors wrap ErrMalformed.
func (t Trade) Validate() error {
	if err := contract.ValidateSymbol(t.Product); err != nil {
		return fmt.Errorf("%w: trade product: %v", ErrMalformed, err)
	}
	if !finiteNonNegative(t.Price) || t.Price == 0 || !finiteNonNegative(t.Size) {
		return fmt.Errorf("%w: trade %s price %v size %v: price must be finite and positive, size finite and not negative", ErrMalformed, t.Product, t.Price, t.Size)
	}
	if t.Time.Unix() <= 0 {
		return fmt.Errorf("%w: trade %s has no time", ErrMalformed, t.Product)
	}
	return nil
}

// Level is one order-book price level with the absolute quantity resting
// there; 0 removes the level.
type Level struct {
	Price, Quantity float64
}

// BookUpdate is a level2 snapshot (replace the book) or a batch of level
// changes of one product.
type BookUpdate struct {
	Product  string
	Snapshot bool
	Bids     []Level
	Asks     []Level
	Time     time.Time
}

// Validate checks the product and every level. Errors wrap ErrMalformed.
func (u BookUpdate) Validate() error {
	if err := contract.ValidateSymbol(u.Product); err != nil {
		return fmt.Errorf("%w: book product: %v", ErrMalformed, err)
	}
	for _, side := range [][]Level{u.Bids, u.Asks} {
		for _, l := range side {
			if !finiteNonNegative(l.Price) || l.Price == 0 || !finiteNonNegative(l.Quantity) {
				return fmt.Errorf("%w: book %s level price %v quantity %v", ErrMalformed, u.Product, l.Price, l.Quantity)
			}
		}
	}
	return nil
}

// Gap reports that live data of some products was lost between From and To
// (a reconnect, a sequence jump); the feed backfills that interval.
type Gap struct {
	// Products lists the affected products; empty means every subscribed one.
	Products []string
	From, To time.Time
	// Cause says why, for logs and status ("reconnect", "sequence").
	Cause string
}

// Sink receives a source's live data. A source calls it from its own
// goroutines; the calls for one product come in order.
type Sink interface {
	// Trade is one trade.
	Trade(Trade)
	// Candle is the current state of an exchange bucket of the source's
	// CandleTimeframe (it replaces what was known of that bucket).
	Candle(Bar)
	// Book is a level2 snapshot or update.
	Book(BookUpdate)
	// Clock says that the source's time has reached now: bars that end
	// at or before now are closed.
	Clock(now time.Time)
	// CandleThenClock is Candle(b) then Clock(now) as one step: nothing
	// (a flush in particular) sees the state between the two, so a bucket
	// that ends by now is only ever seen closed.
	CandleThenClock(b Bar, now time.Time)
	// Gap reports lost live data.
	Gap(Gap)
	// Malformed reports market data that failed validation and was dropped.
	Malformed(err error)
}

// Caps describe what a source delivers and how bars are built from it.
type Caps struct {
	// TradeTimeframes are built from trades, each trade updating the bar
	// of each of these timeframes.
	TradeTimeframes []contract.Timeframe
	// CandleTimeframe is the timeframe of the source's Candle events
	// ("" when it sends none); longer timeframes of Timeframes are
	// aggregated from its buckets.
	CandleTimeframe contract.Timeframe
	// Timeframes are every timeframe the feed publishes for this source.
	Timeframes []contract.Timeframe
	// Reconcile asks the feed to re-read each bar from History once it
	// closes, after ReconcileDelay (the exchange's own bucket wins).
	Reconcile      bool
	ReconcileDelay time.Duration
	// HistoryRate is how many History requests per second the source may
	// send (0: no limit); a backfill plan estimates its time with it.
	HistoryRate float64
}

// Aggregated are the timeframes of Timeframes built from CandleTimeframe
// buckets: longer than CandleTimeframe and not built from trades.
func (c Caps) Aggregated() []contract.Timeframe {
	if c.CandleTimeframe == "" {
		return nil
	}
	var out []contract.Timeframe
	for _, tf := range c.Timeframes {
		if tf.Duration() > c.CandleTimeframe.Duration() && !slices.Contains(c.TradeTimeframes, tf) {
			out = append(out, tf)
		}
	}
	return out
}

// Source is a market data source: live data through the Sink it was built
// with, and history for backfills, gap fills and reconciliation.
type Source interface {
	// Name is sim, coinbase or replay.
	Name() string
	// Caps describe the source's data.
	Caps() Caps
	// Run delivers live data until ctx ends.
	Run(ctx context.Context) error
	// Subscribe adds a reference to (channel, product); the first one
	// starts the upstream subscription. Unsubscribe drops one.
	Subscribe(ch Channel, product string) error
	Unsubscribe(ch Channel, product string) error
	// History returns the bars of product at tf whose start lies in
	// [tf.BarStart(from), to), oldest first, each complete up to
	// min(to, Now()). One call with at most 300 bars is one page.
	History(ctx context.Context, product string, tf contract.Timeframe, from, to time.Time) ([]Bar, error)
	// Now is the source's clock (the simulator's and the replay's run
	// apart from the wall clock).
	Now() time.Time
	// Status describes the source's connections and counters.
	Status() any
}

// Aggregate combines bars (any timeframe shorter than tf, any order) into
// bars of tf, oldest first: open of the first, close of the last, highest
// high, lowest low, summed volume.
func Aggregate(product string, tf contract.Timeframe, bars []Bar) []Bar {
	sorted := slices.Clone(bars)
	slices.SortFunc(sorted, func(a, b Bar) int { return a.Start.Compare(b.Start) })
	var out []Bar
	for _, b := range sorted {
		start := tf.BarStart(b.Start)
		if n := len(out); n > 0 && out[n-1].Start.Equal(start) {
			out[n-1] = merge(out[n-1], b)
			continue
		}
		out = append(out, Bar{Product: product, Timeframe: tf, Start: start, Open: b.Open, High: b.High, Low: b.Low, Close: b.Close, Volume: b.Volume})
	}
	return out
}

// merge combines an earlier part of a bar with a later one.
func merge(earlier, later Bar) Bar {
	earlier.High = max(earlier.High, later.High)
	earlier.Low = min(earlier.Low, later.Low)
	earlier.Close = later.Close
	earlier.Volume += later.Volume
	return earlier
}
