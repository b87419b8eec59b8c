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
	if last, ok := s.lastClosed(); ok && c.Start > last.start+int64(id.Timeframe.Duration()/time.Second) {
		// A gap: rebuild if Redis holds the bars in between (this
		// instance missed them), else the market had no trades then.
		between, err := e.store.Candles(ctx, id, last.start+1, c.Start-1)
		if err != nil {
			return err
		}
		if len(between) > 0 {
			_, err := e.rebuild(ctx, u, id, writeNew)
			return err
		}
	}
	began := time.Now()
	ups, rebuild, err := s.apply(c)
	e.metrics.observeCompute(ctx, time.Since(began), "update")
	switch {
	case err != nil:
		e.log.WarnContext(ctx, "candle rejected", "series", id.String(), "start", c.Start, "err", err)
		return nil
	case rebuild:
		_, err := e.rebuild(ctx, u, id, writeNew)
		return err
	}
	if err := e.emit(ctx, ups); err != nil {
		return fmt.Errorf("candle %s %d: %w", id, c.Start, err)
	}
	return nil
}
