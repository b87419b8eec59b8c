package feed

import (
	"context"
	"fmt"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/engine"
	"vigil.dev/services/feed/internal/market"
)

// pageBars is the most bars one history page asks for (Coinbase rejects
// more than 350 buckets per request; 300 is safe).
const pageBars = 300

// fillGaps writes, for every subscriber and timeframe, the bars since the
// last stored candle (at most GapFillBars back) read from history. It
// returns how many bars each series gained (bars after the last stored
// one) and the problems met; it stops when ctx ends.
func (f *feed) fillGaps(ctx context.Context, subs []engine.Subscriber) (map[string]map[contract.Timeframe]int, []string) {
	result := map[string]map[contract.Timeframe]int{}
	var errs []string
	src := f.eng.Source()
	for _, sub := range subs {
		result[sub.Symbol] = map[contract.Timeframe]int{}
		for _, tf := range src.Caps().Timeframes {
			if ctx.Err() != nil {
				return result, append(errs, ctx.Err().Error())
			}
			n, err := f.fillSeries(ctx, sub, tf)
			result[sub.Symbol][tf] = n
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s %s: %v", sub.Symbol, tf, err))
			}
		}
	}
	return result, errs
}

// fillSeries fills one series' gap and returns how many new bars it got.
func (f *feed) fillSeries(ctx context.Context, sub engine.Subscriber, tf contract.Timeframe) (int, error) {
	series := sub.Series(tf)
	last, stored, err := f.writer.Store().LastCandle(ctx, series)
	if err != nil {
		return 0, err
	}
	src := f.eng.Source()
	now := src.Now()
	from := tf.BarStart(now.Add(-time.Duration(f.cfg.GapFillBars-1) * tf.Duration()))
	if stored && last.StartTime().After(from) {
		from = last.StartTime()
	}
	gained := 0
	err = f.pages(ctx, sub, tf, from, now, "gap", func(cs []contract.Candle, written []bool) {
		for i, c := range cs {
			if written[i] && (!stored || c.Start > last.Start) {
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
