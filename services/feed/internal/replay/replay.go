// Package replay replays a CSV file of 1h bars (columns
// start,open,high,low,close,volume with start in UNIX seconds, like
// ../shared/data/btcusd_1h.csv) as the feed's market data, for tests and
// benchmarks.
//
// It publishes the file's 1h bars exactly, one closed bar per row, and the
// 4h and 1d bars aggregated from them (in progress until a row past their
// end arrives). The 1m, 5m and 15m timeframes cannot be derived from hourly
// bars, so nothing is published for them.
//
// The replay's clock is the end of the last row played; before playback it
// is the first row's start. Playback starts when the replay symbol is first
// subscribed, pauses while nobody subscribes it, and stops at the end of the
// file. Other symbols can be subscribed but have no data.
package replay

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/source"
)

// Sentinel errors.
var (
	// ErrInvalidConfig means a Config field is out of range.
	ErrInvalidConfig = errors.New("replay: invalid config")
	// ErrInvalidFile means the file is missing, unreadable, or has no usable rows.
	ErrInvalidFile = errors.New("replay: invalid file")
)

// header is the expected first line.
var header = []string{"start", "open", "high", "low", "close", "volume"}

// Config configures a Replay.
type Config struct {
	File string
	// Speed is rows per second; 0 plays as fast as the feed takes them.
	Speed float64
	// Symbol is the product the rows belong to.
	Symbol string
}

// Replay plays a file; it implements source.Source.
type Replay struct {
	cfg       Config
	sink      source.Sink
	rows      []source.Bar
	malformed []error

	mu      sync.Mutex
	refs    map[source.Channel]map[string]int
	played  int // rows delivered
	wake    chan struct{}
	started time.Time
}

// New loads and checks the file. Rows that fail validation (non-finite or
// negative values, high below low, a start not on an hour) are kept out and
// reported to the sink as malformed when Run starts; rows must be in time
// order.
func New(cfg Config, sink source.Sink) (*Replay, error) {
	if cfg.Speed < 0 {
		return nil, fmt.Errorf("%w: speed %v is negative", ErrInvalidConfig, cfg.Speed)
	}
	if err := contract.ValidateSymbol(cfg.Symbol); err != nil {
		return nil, fmt.Errorf("%w: symbol: %w", ErrInvalidConfig, err)
	}
	f, err := os.Open(cfg.File)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidFile, err)
	}
	defer f.Close()
	rows, malformed, err := Parse(f, cfg.Symbol)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidFile, cfg.File, err)
	}
	return &Replay{cfg: cfg, sink: sink, rows: rows, malformed: malformed, refs: map[source.Channel]map[string]int{}, wake: make(chan struct{}, 1)}, nil
}

// Parse reads the CSV: the header, then one 1h bar per row in time order.
// Rows that fail validation are returned as malformed errors (naming the
// line) instead of bars; a bad header, a row out of order or no usable row
// at all is an error.
func Parse(r io.Reader, symbol string) (rows []source.Bar, malformed []error, err error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	first, err := cr.Read()
	if err != nil {
		return nil, nil, fmt.Errorf("header: %w", err)
	}
	if !slices.Equal(trimAll(first), header) {
		return nil, nil, fmt.Errorf("header is %q, want %q", strings.Join(first, ","), strings.Join(header, ","))
	}
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			malformed = append(malformed, fmt.Errorf("%w: line %d: %v", source.ErrMalformed, line, err))
			continue
		}
		b, err := parseRow(rec, symbol)
		if err != nil {
			malformed = append(malformed, fmt.Errorf("line %d: %w", line, err))
			continue
		}
		if n := len(rows); n > 0 && !b.Start.After(rows[n-1].Start) {
			return nil, nil, fmt.Errorf("line %d: start %v is not after the previous row's %v", line, b.Start, rows[n-1].Start)
		}
		rows = append(rows, b)
	}
	if len(rows) == 0 {
		return nil, malformed, errors.New("no usable rows")
	}
	return rows, malformed, nil
}

func trimAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.TrimSpace(s)
	}
	return out
}

func parseRow(rec []string, symbol string) (source.Bar, error) {
	if len(rec) != len(header) {
		return source.Bar{}, fmt.Errorf("%w: %d fields, want %d", source.ErrMalformed, len(rec), len(header))
	}
	start, err := strconv.ParseInt(strings.TrimSpace(rec[0]), 10, 64)
	if err != nil {
		return source.Bar{}, fmt.Errorf("%w: start %q is not UNIX seconds", source.ErrMalformed, rec[0])
	}
	var v [5]float64
	for i := range v {
		if v[i], err = strconv.ParseFloat(strings.TrimSpace(rec[i+1]), 64); err != nil {
			return source.Bar{}, fmt.Errorf("%w: %s %q is not a number", source.ErrMalformed, header[i+1], rec[i+1])
		}
	}
	b := source.Bar{Product: symbol, Timeframe: contract.TF1h, Start: time.Unix(start, 0).UTC(), Open: v[0], High: v[1], Low: v[2], Close: v[3], Volume: v[4]}
	return b, b.Validate()
}

// Name implements source.Source.
func (r *Replay) Name() string { return "replay" }

// Caps implements source.Source: 1h buckets, 4h and 1d aggregated.
func (r *Replay) Caps() source.Caps {
	return source.Caps{CandleTimeframe: contract.TF1h, Timeframes: []contract.Timeframe{contract.TF1h, contract.TF4h, contract.TF1d}}
}

// Now implements source.Source: the end of the last row played.
func (r *Replay) Now() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nowLocked()
}

func (r *Replay) nowLocked() time.Time {
	if r.played == 0 {
		return r.rows[0].Start
	}
	return r.rows[r.played-1].End()
}

// Subscribe implements source.Source.
func (r *Replay) Subscribe(ch source.Channel, product string) error {
	if err := contract.ValidateSymbol(product); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refs[ch] == nil {
		r.refs[ch] = map[string]int{}
	}
	r.refs[ch][product]++
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// Unsubscribe implements source.Source.
func (r *Replay) Unsubscribe(ch source.Channel, product string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch n := r.refs[ch][product]; n {
	case 0:
		return fmt.Errorf("replay: %s %s is not subscribed", ch, product)
	case 1:
		delete(r.refs[ch], product)
	default:
		r.refs[ch][product] = n - 1
	}
	return nil
}

// Status implements source.Source.
func (r *Replay) Status() any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return map[string]any{"file": r.cfg.File, "symbol": r.cfg.Symbol, "rows": len(r.rows), "played": r.played,
		"malformed_rows": len(r.malformed), "clock": r.nowLocked(), "finished": r.played == len(r.rows), "started_at": r.started}
}

// Run implements source.Source: it reports the malformed rows, then plays
// the rows while the symbol is subscribed, Speed rows per second.
func (r *Replay) Run(ctx context.Context) error {
	for _, err := range r.malformed {
		r.sink.Malformed(err)
	}
	var pace <-chan time.Time
	if r.cfg.Speed > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / r.cfg.Speed))
		defer t.Stop()
		pace = t.C
	}
	for {
		r.mu.Lock()
		subscribed := r.refs[source.ChannelBars][r.cfg.Symbol] > 0
		done := r.played == len(r.rows)
		if subscribed && r.started.IsZero() {
			r.started = time.Now()
		}
		r.mu.Unlock()
		if done {
			<-ctx.Done()
			return nil
		}
		if !subscribed {
			select {
			case <-ctx.Done():
				return nil
			case <-r.wake:
				continue
			}
		}
		if pace != nil {
			select {
			case <-ctx.Done():
				return nil
			case <-pace:
			}
		} else if ctx.Err() != nil {
			return nil
		}
		r.mu.Lock()
		row := r.rows[r.played]
		r.played++
		r.mu.Unlock()
		// One hand-over: a flush between the bar and the clock would
		// publish the finished row as in progress first.
		r.sink.CandleThenClock(row, row.End())
	}
}

// History implements source.Source: the rows played so far with start in
// [tf.BarStart(from), to) for 1h, their aggregates for 4h and 1d, nothing
// for shorter timeframes.
func (r *Replay) History(_ context.Context, product string, tf contract.Timeframe, from, to time.Time) ([]source.Bar, error) {
	if err := tf.Validate(); err != nil {
		return nil, err
	}
	if product != r.cfg.Symbol {
		return nil, fmt.Errorf("%w: replay has only %s, not %q", source.ErrUnknownProduct, r.cfg.Symbol, product)
	}
	if tf.Duration() < time.Hour {
		return nil, nil
	}
	r.mu.Lock()
	played := r.rows[:r.played]
	r.mu.Unlock()
	start := tf.BarStart(from)
	var in []source.Bar
	for _, b := range played {
		if !b.Start.Before(start) && b.Start.Before(to) {
			in = append(in, b)
		}
	}
	if tf == contract.TF1h {
		return in, nil
	}
	return source.Aggregate(product, tf, in), nil
}
