package coinbase

// This file: Source, the feed's Coinbase Advanced Trade source, which
// adapts the package's WebSocket Stream and REST client to source.Source.
//
// Bars are built as Coinbase offers them: the 1m bar from market_trades,
// the 5m bar from the candles channel (Coinbase's own five-minute buckets),
// 15m, 1h, 4h and 1d aggregated from those buckets; every bar is re-read
// from REST once it closes (after ReconcileDelay, since the exchange needs a
// moment to finish its bucket) and Coinbase's bucket wins. History is REST
// candles, one request per page of at most 300 buckets, through one rate
// limiter per credential. A sequence gap or a reconnect becomes a
// source.Gap of exactly the interval without data.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/source"
)

// Defaults of Config.
const (
	DefaultReconcileDelay = 5 * time.Second
	DefaultClockInterval  = 100 * time.Millisecond
)

// Config configures a Source.
type Config struct {
	WebSocketURL string
	RESTURL      string
	// Credentials, when set, sign REST requests (private endpoint) and
	// WebSocket messages.
	Credentials *Credentials
	// RequestsPerSecond is the REST limit of the credential in use
	// (Coinbase: 10 public, 30 private).
	RequestsPerSecond float64
	SilenceTimeout    time.Duration
	ReconnectBase     time.Duration
	ReconnectMax      time.Duration
	ReconcileDelay    time.Duration
	// ClockInterval is how often bars are checked for closing.
	ClockInterval time.Duration
	Log           *slog.Logger
}

// Source is the Coinbase market data source.
type Source struct {
	cfg    Config
	sink   source.Sink
	stream *Stream
	rest   *RESTClient

	mu   sync.Mutex
	gaps map[string]uint64
	// applied are, per product, the ids of the trades last handed to the
	// sink, so a market_trades snapshot after a (re)subscribe does not hand
	// them over again.
	applied map[string]*recentIDs
}

// New builds the stream and the REST client; nothing connects before Run.
func New(cfg Config, sink source.Sink) (*Source, error) {
	if cfg.ReconcileDelay <= 0 {
		cfg.ReconcileDelay = DefaultReconcileDelay
	}
	if cfg.ClockInterval <= 0 {
		cfg.ClockInterval = DefaultClockInterval
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Source{cfg: cfg, sink: sink, gaps: map[string]uint64{}, applied: map[string]*recentIDs{}}
	var err error
	s.stream, err = NewStream(StreamConfig{
		URL: cfg.WebSocketURL, Handler: HandlerFunc(s.handle), Credentials: cfg.Credentials, Logger: cfg.Log,
		SilenceTimeout: cfg.SilenceTimeout, ReconnectBase: cfg.ReconnectBase, ReconnectMax: cfg.ReconnectMax,
	})
	if err != nil {
		return nil, err
	}
	s.rest, err = NewRESTClient(RESTConfig{
		BaseURL: cfg.RESTURL, Credentials: cfg.Credentials, RequestsPerSecond: cfg.RequestsPerSecond, Logger: cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Name implements source.Source.
func (s *Source) Name() string { return "coinbase" }

// Caps implements source.Source.
func (s *Source) Caps() source.Caps {
	return source.Caps{
		TradeTimeframes: []contract.Timeframe{contract.TF1m},
		CandleTimeframe: contract.TF5m,
		Timeframes:      contract.Timeframes,
		Reconcile:       true,
		ReconcileDelay:  s.cfg.ReconcileDelay,
		HistoryRate:     s.rest.RequestsPerSecond(),
	}
}

// Now implements source.Source: the wall clock.
func (s *Source) Now() time.Time { return time.Now().UTC() }

// Run implements source.Source: the stream, plus a clock that closes bars.
func (s *Source) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		tick := time.NewTicker(s.cfg.ClockInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				s.sink.Clock(now.UTC())
			}
		}
	})
	return s.stream.Run(ctx)
}

// channels are the stream channels behind a market channel.
func channels(ch source.Channel) ([]Channel, error) {
	switch ch {
	case source.ChannelBars:
		return []Channel{ChannelCandles, ChannelMarketTrades}, nil
	case source.ChannelBook:
		return []Channel{ChannelLevel2}, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrInvalidChannel, ch)
}

// Subscribe implements source.Source (the stream counts references).
func (s *Source) Subscribe(ch source.Channel, product string) error {
	chs, err := channels(ch)
	if err != nil {
		return err
	}
	for _, c := range chs {
		if err := s.stream.Subscribe(c, product); err != nil {
			return err
		}
	}
	return nil
}

// Unsubscribe implements source.Source.
func (s *Source) Unsubscribe(ch source.Channel, product string) error {
	chs, err := channels(ch)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range chs {
		errs = append(errs, s.stream.Unsubscribe(c, product))
	}
	if ch == source.ChannelBars {
		s.mu.Lock()
		delete(s.applied, product)
		s.mu.Unlock()
	}
	return errors.Join(errs...)
}

// History implements source.Source: REST candles of [tf.BarStart(from), to).
func (s *Source) History(ctx context.Context, product string, tf contract.Timeframe, from, to time.Time) ([]source.Bar, error) {
	g, err := GranularityForTimeframe(string(tf))
	if err != nil {
		return nil, err
	}
	if now := s.Now(); to.After(now) {
		to = now
	}
	candles, err := s.rest.Candles(ctx, product, g, tf.BarStart(from), to)
	if err != nil {
		return nil, err
	}
	out := make([]source.Bar, len(candles))
	for i, c := range candles {
		out[i] = bar(c, tf)
	}
	return out, nil
}

func bar(c Candle, tf contract.Timeframe) source.Bar {
	return source.Bar{Product: c.Product, Timeframe: tf, Start: c.Start, Open: c.Open, High: c.High, Low: c.Low, Close: c.Close, Volume: c.Volume}
}

// Status implements source.Source.
func (s *Source) Status() any {
	s.mu.Lock()
	gaps := map[string]uint64{}
	for k, v := range s.gaps {
		gaps[k] = v
	}
	s.mu.Unlock()
	return map[string]any{"stream": s.stream.Stats(), "freshness": s.stream.Freshness(), "rest": s.rest.Stats(), "gaps": gaps,
		"authenticated": s.cfg.Credentials != nil}
}

// Counters are the stream's and REST client's counters for metrics.
func (s *Source) Counters() map[string]int64 {
	st, rs := s.stream.Stats(), s.rest.Stats()
	return map[string]int64{
		"frames": int64(st.Frames), "malformed": int64(st.Malformed), "oversized": int64(st.Oversized),
		"unknown_channel": int64(st.UnknownChannel), "error_frames": int64(st.ErrorFrames), "gaps": int64(st.Gaps),
		"reconnects": int64(st.Reconnects), "silence_timeouts": int64(st.SilenceTimeouts),
		"rest_requests": int64(rs.Requests), "rest_429": int64(rs.Throttled), "rest_401": int64(rs.Unauthorized), "rest_retries": int64(rs.Retries),
	}
}

// handle turns stream events into sink calls.
func (s *Source) handle(ev Event) {
	switch e := ev.(type) {
	case *CandlesEvent:
		for _, c := range e.Candles {
			s.sink.Candle(bar(c, contract.TF5m))
		}
	case *TradesEvent:
		for _, t := range s.newTrades(e) {
			s.sink.Trade(source.Trade{Product: t.Product, Price: t.Price, Size: t.Size, Time: t.Time.UTC()})
		}
	case *Level2Event:
		u := source.BookUpdate{Product: e.Product, Snapshot: e.Snapshot, Time: e.Timestamp}
		for _, l := range e.Updates {
			level := source.Level{Price: l.Price, Quantity: l.Quantity}
			if l.Side == SideBid {
				u.Bids = append(u.Bids, level)
			} else {
				u.Asks = append(u.Asks, level)
			}
		}
		s.sink.Book(u)
	case *GapEvent:
		s.countGap("sequence")
		s.sink.Gap(source.Gap{From: e.From, To: e.To, Cause: "sequence"})
	case *ReconnectedEvent:
		cause := "reconnect"
		if errors.Is(e.Cause, ErrSilence) {
			cause = "silence"
		}
		s.countGap(cause)
		s.sink.Gap(source.Gap{From: e.From, To: e.To, Cause: cause})
	}
}

func (s *Source) countGap(cause string) {
	s.mu.Lock()
	s.gaps[cause]++
	s.mu.Unlock()
}

// newTrades are the trades of e not handed to the sink before, oldest
// first, and remembers them as handed over. A snapshot (the last 100
// trades, newest first, sent after every subscribe) overlaps the trades
// applied live before a reconnect or resubscribe: those are skipped by
// trade_id, so the open bar's volume counts each trade once and its close
// ends on the newest price. Trades without an id cannot be told apart and
// always pass.
func (s *Source) newTrades(e *TradesEvent) []Trade {
	trades := e.Trades
	if e.Snapshot {
		trades = slices.Clone(trades)
		slices.Reverse(trades)
		slices.SortStableFunc(trades, func(a, b Trade) int { return a.Time.Compare(b.Time) })
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := trades[:0:0]
	for _, t := range trades {
		if t.TradeID != "" {
			ids := s.applied[t.Product]
			if ids == nil {
				ids = newRecentIDs(tradeMemory)
				s.applied[t.Product] = ids
			}
			if !ids.add(t.TradeID) {
				continue
			}
		}
		out = append(out, t)
	}
	return out
}

// tradeMemory is how many trade ids are remembered per product: a snapshot
// holds the last 100 trades, and the applied ones among them are the last
// applied before the gap, so 100 would do; the rest is margin.
const tradeMemory = 1000

// recentIDs is a bounded set of the last ids added.
type recentIDs struct {
	set  map[string]struct{}
	ring []string
	next int
}

func newRecentIDs(n int) *recentIDs {
	return &recentIDs{set: make(map[string]struct{}, n), ring: make([]string, 0, n)}
}

// add remembers id, forgetting the oldest past the bound, and reports
// whether it was new.
func (r *recentIDs) add(id string) bool {
	if _, seen := r.set[id]; seen {
		return false
	}
	if len(r.ring) < cap(r.ring) {
		r.ring = append(r.ring, id)
	} else {
		delete(r.set, r.ring[r.next])
		r.ring[r.next] = id
		r.next = (r.next + 1) % len(r.ring)
	}
	r.set[id] = struct{}{}
	return true
}
