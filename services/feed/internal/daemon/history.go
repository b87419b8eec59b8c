package daemon

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/redis/go-redis/v9"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/candles"
	"vigil.dev/services/feed/internal/source"
)

// pageBars is the most bars one history page asks for (Coinbase rejects
// more than 350 buckets per request; 300 is safe).
const pageBars = 300

// marks are, per symbol and timeframe, the start of the newest bar stored
// for a user before their symbols were attached: where each gap begins.
// A series with no stored bar has no entry.
type marks map[string]map[contract.Timeframe]int64

// readMarks reads the marks of sub's series in one pipeline. It runs before
// the symbols are attached, so live writes cannot hide the gap.
func (f *feed) readMarks(subs []candles.Subscriber) (marks, error) {
	ctx, cancel := context.WithTimeout(context.Background(), markTimeout)
	defer cancel()
	pipe := f.writer.Store().Client().Pipeline()
	type read struct {
		symbol string
		tf     contract.Timeframe
		cmd    *redis.ZSliceCmd
	}
	var reads []read
	for _, sub := range subs {
		for _, tf := range f.eng.Source().Caps().Timeframes {
			reads = append(reads, read{sub.Symbol, tf, pipe.ZRevRangeWithScores(ctx, contract.CandleKey(sub.Series(tf)), 0, 0)})
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return marks{}, fmt.Errorf("reading the last stored candles: %w", err)
	}
	out := marks{}
	for _, r := range reads {
		if zs := r.cmd.Val(); len(zs) > 0 {
			if out[r.symbol] == nil {
				out[r.symbol] = map[contract.Timeframe]int64{}
			}
			out[r.symbol][r.tf] = int64(zs[0].Score)
		}
	}
	return out, nil
}

// markTimeout bounds reading the marks.
const markTimeout = 2 * time.Second

// fillTarget is a subscriber whose series a gap fill completes, and the
// source's clock when it was attached: the engine sends every bar open then
// or later, the fill writes the bars that ended by then.
type fillTarget struct {
	sub        candles.Subscriber
	attachedAt time.Time
}

// fillGaps writes, for every target and timeframe, the bars from its mark
// (at most GapFillBars back) that ended by the attach, read from history,
// all in one candlewriter.Write: one Redis pipeline and one round of
// publishes per candlewriter.Batch candles instead of one per timeframe.
// It returns how many closed bars each series was missing and got, and the
// problems met; it stops when ctx ends.
func (f *feed) fillGaps(ctx context.Context, targets []fillTarget, from marks) (contract.GapFill, []string) {
	result := contract.GapFill{}
	var errs []string
	var cs []contract.Candle
	var after []int64 // per candle: it counts as gained when it starts after this
	for _, tg := range targets {
		result[tg.sub.Symbol] = map[contract.Timeframe]int{}
		for _, tf := range f.eng.Source().Caps().Timeframes {
			if ctx.Err() != nil {
				return result, append(errs, ctx.Err().Error())
			}
			result[tg.sub.Symbol][tf] = 0
			mark, stored := from[tg.sub.Symbol][tf]
			got, err := f.gapOf(ctx, tg, tf, mark, stored)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s %s: %v", tg.sub.Symbol, tf, err))
			}
			cs = append(cs, got...)
			for range got {
				after = append(after, gainedAfter(mark, stored))
			}
		}
	}
	if len(cs) == 0 {
		return result, errs
	}
	written, err := f.writer.Write(ctx, cs)
	if err != nil {
		errs = append(errs, fmt.Sprintf("writing %d candles: %v", len(cs), err))
	}
	for i, c := range cs {
		if written[i] && c.Closed && c.Start > after[i] {
			result[c.Symbol][c.Timeframe]++
		}
	}
	return result, errs
}

// gainedAfter is the start after which a filled bar was missing from the
// series: its mark, or nothing when the series had no bar.
func gainedAfter(mark int64, stored bool) int64 {
	if stored {
		return mark
	}
	return math.MinInt64
}

// gapOf reads one series' gap from history: the bars from its mark (or the
// fill depth) that ended by the attach, as candles of the series.
func (f *feed) gapOf(ctx context.Context, tg fillTarget, tf contract.Timeframe, mark int64, stored bool) ([]contract.Candle, error) {
	from := tf.BarStart(tg.attachedAt.Add(-time.Duration(f.cfg.GapFillBars-1) * tf.Duration()))
	if stored && time.Unix(mark, 0).After(from) {
		from = time.Unix(mark, 0).UTC()
	}
	var out []contract.Candle
	err := f.fetchPages(ctx, tg.sub, tf, from, tf.BarStart(tg.attachedAt), "gap", func(cs []contract.Candle) error {
		out = append(out, cs...)
		return nil
	})
	return out, err
}

// pages reads [from, to) of sub's symbol at tf from history in pages of at
// most pageBars bars, writes each page to sub's series and calls done after
// each page.
func (f *feed) pages(ctx context.Context, sub candles.Subscriber, tf contract.Timeframe, from, to time.Time, job string, done func([]contract.Candle, []bool)) error {
	return f.fetchPages(ctx, sub, tf, from, to, job, func(cs []contract.Candle) error {
		written, err := f.writer.Write(ctx, cs)
		if err != nil {
			return err
		}
		done(cs, written)
		return nil
	})
}

// fetchPages reads [from, to) of sub's symbol at tf from history in pages
// of at most pageBars bars and hands each page, as candles of sub's series,
// to take.
func (f *feed) fetchPages(ctx context.Context, sub candles.Subscriber, tf contract.Timeframe, from, to time.Time, job string, take func([]contract.Candle) error) error {
	src := f.eng.Source()
	span := time.Duration(pageBars) * tf.Duration()
	for pageFrom := tf.BarStart(from); pageFrom.Before(to); pageFrom = pageFrom.Add(span) {
		pageTo := pageFrom.Add(span)
		if pageTo.After(to) {
			pageTo = to
		}
		fetched := time.Now().UnixMicro()
		bars, err := src.History(ctx, sub.Symbol, tf, pageFrom, pageTo)
		f.metrics.BackfillPage(ctx, job)
		if err != nil {
			return err
		}
		now := src.Now()
		cs := make([]contract.Candle, 0, len(bars))
		for _, b := range bars {
			cs = append(cs, candleOf(sub, b, fetched, now, src.Name()))
		}
		if err := take(cs); err != nil {
			return err
		}
	}
	return nil
}

// candleOf is a history bar as a candle of sub's series, versioned with the
// fetch time and closed when it ended by the source's now.
func candleOf(sub candles.Subscriber, b source.Bar, fetched int64, now time.Time, source string) contract.Candle {
	label := "history"
	if source == "coinbase" {
		label = "rest"
	}
	return contract.Candle{
		SeriesID: sub.Series(b.Timeframe),
		Start:    b.Start.Unix(),
		Open:     b.Open, High: b.High, Low: b.Low, Close: b.Close, Volume: b.Volume,
		Closed:  !b.End().After(now),
		Version: fetched,
		Source:  label,
	}
}
