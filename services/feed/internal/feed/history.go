package feed

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/engine"
	"vigil.dev/services/feed/internal/market"
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
func (f *feed) readMarks(subs []engine.Subscriber) (marks, error) {
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

// fillGaps writes, for every subscriber and timeframe, the bars since its
// mark (at most GapFillBars back) read from history. It returns how many
// closed bars each series was missing and got, and the problems met; it
// stops when ctx ends.
func (f *feed) fillGaps(ctx context.Context, subs []engine.Subscriber, from marks) (map[string]map[contract.Timeframe]int, []string) {
	result := map[string]map[contract.Timeframe]int{}
	var errs []string
	for _, sub := range subs {
		result[sub.Symbol] = map[contract.Timeframe]int{}
		for _, tf := range f.eng.Source().Caps().Timeframes {
			if ctx.Err() != nil {
				return result, append(errs, ctx.Err().Error())
			}
			mark, stored := from[sub.Symbol][tf]
			n, err := f.fillSeries(ctx, sub, tf, mark, stored)
			result[sub.Symbol][tf] = n
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s %s: %v", sub.Symbol, tf, err))
			}
		}
	}
	return result, errs
}

// fillSeries fills one series from its mark and returns how many closed
// bars after the mark it wrote.
func (f *feed) fillSeries(ctx context.Context, sub engine.Subscriber, tf contract.Timeframe, mark int64, stored bool) (int, error) {
	now := f.eng.Source().Now()
	from := tf.BarStart(now.Add(-time.Duration(f.cfg.GapFillBars-1) * tf.Duration()))
	if stored && time.Unix(mark, 0).After(from) {
		from = time.Unix(mark, 0).UTC()
	}
	gained := 0
	err := f.pages(ctx, sub, tf, from, now, "gap", func(cs []contract.Candle, written []bool) {
		for i, c := range cs {
			if written[i] && c.Closed && (!stored || c.Start > mark) {
				gained++
			}
		}
	})
	return gained, err
}

// pages reads [from, to) of sub's symbol at tf from history in pages of at
// most pageBars bars, writes each page to sub's series and calls done after
// each page.
func (f *feed) pages(ctx context.Context, sub engine.Subscriber, tf contract.Timeframe, from, to time.Time, job string, done func([]contract.Candle, []bool)) error {
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
		written, err := f.writer.Write(ctx, cs)
		if err != nil {
			return err
		}
		done(cs, written)
	}
	return nil
}

// candleOf is a history bar as a candle of sub's series, versioned with the
// fetch time and closed when it ended by the source's now.
func candleOf(sub engine.Subscriber, b market.Bar, fetched int64, now time.Time, source string) contract.Candle {
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
