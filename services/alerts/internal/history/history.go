// Package history rebuilds the indicator updates of a series' latest closed
// bars from what the indicators service stored in Redis (the candle and
// one key per indicator, pkg/redisstore), so that an instance that takes a
// user over can evaluate the bars that were published while nobody
// evaluated them.
package history

import (
	"context"
	"fmt"
	"sort"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
)

// Reader reads stored series.
type Reader struct {
	store *redisstore.Store
}

// New returns a reader of store.
func New(store *redisstore.Store) *Reader { return &Reader{store: store} }

// ClosedBars returns one update per closed bar of series that starts at or
// after from (UNIX seconds), oldest first, as the indicators service would
// have published it: Close from the stored candle, Values from the named
// indicators whose stored point at that bar is closed (an indicator without
// one, still warming or not yet recomputed, is absent), and the highest
// version among the candle and those points. Bars whose candle is missing
// or still in progress are left out.
func (r *Reader) ClosedBars(ctx context.Context, series contract.SeriesID, indicators []string, from int64) ([]contract.IndicatorUpdate, error) {
	if err := series.Validate(); err != nil {
		return nil, fmt.Errorf("history of %s: %w", series, err)
	}
	for _, name := range indicators {
		if err := contract.ValidateIndicatorName(name); err != nil {
			return nil, fmt.Errorf("history of %s: %w", series, err)
		}
	}
	candles, err := r.store.Candles(ctx, series, from, 0)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", series, err)
	}
	bars := make(map[int64]*contract.IndicatorUpdate, len(candles))
	for _, c := range candles {
		if !c.Closed {
			continue
		}
		bars[c.Start] = &contract.IndicatorUpdate{SeriesID: series, Start: c.Start, Closed: true,
			Version: c.Version, Close: c.Close, Values: map[string]contract.Fields{}}
	}
	for _, name := range indicators {
		points, err := r.store.Indicator(ctx, series, name, from, 0)
		if err != nil {
			return nil, fmt.Errorf("history of %s: %w", series, err)
		}
		for _, p := range points {
			u, ok := bars[p.Start]
			if !ok || !p.Closed {
				continue
			}
			u.Values[name] = p.Fields
			u.Version = max(u.Version, p.Version)
		}
	}
	out := make([]contract.IndicatorUpdate, 0, len(bars))
	for _, u := range bars {
		out = append(out, *u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start < out[j].Start })
	return out, nil
}
