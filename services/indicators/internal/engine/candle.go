package engine

import (
	"context"
	"fmt"
	"time"

	"vigil.dev/pkg/contract"
)

// HandleCandle processes one candle update from VIGIL_CANDLES. Candles of
// series this instance does not run (another owner, a paused user, a
// timeframe outside the mode) are ignored. Otherwise the series' values
// are computed, written to Redis and published before it returns; a
// candle that does not fit the state (out of order, too old for replay, a
// gap that Redis can fill) rebuilds the series from Redis instead. An
// error means the candle should be delivered again; the series is then
// dropped so that the next delivery rebuilds it.
func (e *Engine) HandleCandle(ctx context.Context, c contract.Candle) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	id := c.SeriesID
	u, runs := e.runsSeries(id)
	if !runs {
		delete(e.series, id)
		return nil
	}
	err := e.handleCandle(ctx, u, c)
	if err != nil {
		delete(e.series, id)
		return err
	}
	now := time.Now()
	u.lastCandle, u.lag = now, now.Sub(time.UnixMicro(c.Version))
	return nil
}

func (e *Engine) handleCandle(ctx context.Context, u *user, c contract.Candle) error {
	id := c.SeriesID
	s := e.series[id]
	if s != nil && e.isForgotten(id) {
		s = nil
	}
	if s == nil {
		_, err := e.rebuild(ctx, u, id, writeNew)
		return err
	}
	filled, ok, err := e.fillGap(ctx, s, c)
	if err != nil {
		return err
	}
	if !ok {
		_, err := e.rebuild(ctx, u, id, writeNew)
		return err
	}
	began := time.Now()
	ups, rebuild, err := s.apply(c)
	e.metrics.observeCompute(ctx, time.Since(began), "update")
	switch {
	case err != nil:
		e.log.WarnContext(ctx, "candle rejected", "series", id.String(), "start", c.Start, "err", err)
		ups = nil
	case rebuild:
		_, err := e.rebuild(ctx, u, id, writeNew)
		return err
	}
	ups = append(filled, ups...)
	if err := e.emit(ctx, ups); err != nil {
		return fmt.Errorf("candle %s %d: %w", id, c.Start, err)
	}
	return nil
}

// fillGap closes the bars between the last closed bar of s and candle c
// from the candles Redis holds for them: bars this instance has not seen
// (its candles arrive out of order within one feed flush, or were
// published while it did not own the series). Every stored bar before c
// counts as closed. It returns their updates; ok is false when the state
// cannot take them and the series must be rebuilt. Without stored bars in
// between, the market had no trades then and c is simply the next bar.
func (e *Engine) fillGap(ctx context.Context, s *series, c contract.Candle) (ups []contract.IndicatorUpdate, ok bool, err error) {
	last, has := s.lastClosed()
	if !has || c.Start <= last.start+int64(c.Timeframe.Duration()/time.Second) {
		return nil, true, nil
	}
	between, err := e.store.Candles(ctx, c.SeriesID, last.start+1, c.Start-1)
	if err != nil {
		return nil, false, err
	}
	for _, b := range between {
		b.Closed = true
		filled, rebuild, err := s.apply(b)
		if rebuild || err != nil {
			return nil, false, nil
		}
		if now, _ := s.lastClosed(); now.start != b.Start {
			return nil, false, nil // the state kept an in-progress version of the bar
		}
		ups = append(ups, filled...)
	}
	return ups, true, nil
}
