package feed

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/engine"
	"vigil.dev/services/feed/internal/market"
)

// pageBars is the most bars one history page asks for (Coinbase rejects
// more than 350 buckets per request; 300 is safe).
const pageBars = 300

// fillGaps writes, for every subscriber and timeframe, the bars since the
// last candle stored before the user became active at source time
// activated (at most GapFillBars back), read from history. It returns how
// many closed bars each series was missing and got, and the problems met;
// it stops when ctx ends.
func (f *feed) fillGaps(ctx context.Context, subs []engine.Subscriber, activated time.Time) (map[string]map[contract.Timeframe]int, []string) {
	result := map[string]map[contract.Timeframe]int{}
	var errs []string
	src := f.eng.Source()
	for _, sub := range subs {
		result[sub.Symbol] = map[contract.Timeframe]int{}
		for _, tf := range src.Caps().Timeframes {
			if ctx.Err() != nil {
				return result, append(errs, ctx.Err().Error())
			}
			n, err := f.fillSeries(ctx, sub, tf, activated)
			result[sub.Symbol][tf] = n
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s %s: %v", sub.Symbol, tf, err))
			}
		}
	}
	return result, errs
}

// fillSeries fills one series' gap and returns how many missing closed
// bars it wrote. The gap starts at the last bar stored before the bar that
// was open at activated: live writes may already have stored that one.
func (f *feed) fillSeries(ctx context.Context, sub engine.Subscriber, tf contract.Timeframe, activated time.Time) (int, error) {
	open := tf.BarStart(activated).Unix()
	last, stored, err := f.lastBefore(ctx, sub.Series(tf), open)
	if err != nil {
		return 0, err
	}
	now := f.eng.Source().Now()
	from := tf.BarStart(now.Add(-time.Duration(f.cfg.GapFillBars-1) * tf.Duration()))
	if stored && time.Unix(last, 0).After(from) {
		from = time.Unix(last, 0).UTC()
	}
	gained := 0
	err = f.pages(ctx, sub, tf, from, now, "gap", func(cs []contract.Candle, written []bool) {
		for i, c := range cs {
			if written[i] && (!stored || c.Start > last) && c.Start < open {
				gained++
			}
		}
	})
	return gained, err
}

// lastBefore is the start of the newest stored bar of series that starts
// before bound (UNIX seconds).
func (f *feed) lastBefore(ctx context.Context, series contract.SeriesID, bound int64) (int64, bool, error) {
	scores, err := f.writer.Store().Client().ZRevRangeByScoreWithScores(ctx, contract.CandleKey(series), &redis.ZRangeBy{
		Max: "(" + strconv.FormatInt(bound, 10), Min: "-inf", Count: 1,
	}).Result()
	if err != nil || len(scores) == 0 {
		return 0, false, err
	}
	return int64(scores[0].Score), true, nil
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
