package series

import (
	"context"
	"errors"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/indicators/internal/catalog"
	"vigil.dev/services/indicators/internal/ta"
)

// MinuteCloseGrace is how long after a minute ends CloseMinutes waits for
// a snapshot of the next minute before it closes the minute itself.
const MinuteCloseGrace = 2 * time.Second

// book is the order-book state of one user's product: the latest snapshot
// and the update of the 1m bar it falls in.
type book struct {
	levels ta.Book
	// open is the start of the minute with in-progress values, 0 when
	// none; closed the start of the last minute closed.
	open, closed int64
	// last is the newest in-progress update of the open minute.
	last contract.IndicatorUpdate
}

// HandleBook processes one order-book snapshot from the feed: it computes
// ob_imbalance, ob_spread and ob_depth and writes and publishes them as
// the in-progress update of the 1m bar containing the snapshot's time.
// The first snapshot of a later minute closes the previous minute with
// its last values. Snapshots of series this instance does not run, older
// than the newest one, or with an empty side are ignored.
func (e *Engine) HandleBook(ctx context.Context, snap contract.BookSnapshot) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var userID int64
	if u := e.users[snap.User]; u != nil {
		userID = u.state.UserID
	}
	id := contract.SeriesID{User: snap.User, UserID: userID, ExchangeID: snap.ExchangeID, Symbol: snap.Symbol, Timeframe: contract.TF1m}
	u, runs := e.runsBook(id)
	if !runs {
		delete(e.books, id)
		return nil
	}
	b := e.books[id]
	if b == nil {
		b = &book{}
		e.books[id] = b
	}
	minute := contract.TF1m.BarStart(snap.Time).Unix()
	version := snap.Time.UnixMicro()
	if minute <= b.closed || minute < b.open || (minute == b.open && version <= b.last.Version) {
		return nil
	}
	if b.open != 0 && minute > b.open {
		if err := e.closeMinute(ctx, b); err != nil {
			return err
		}
	}
	levels := make([]ta.Level, 0, len(snap.Bids)+len(snap.Asks))
	for _, l := range snap.Bids {
		levels = append(levels, ta.Level{Side: ta.Bid, Price: l.Price(), Quantity: l.Quantity()})
	}
	for _, l := range snap.Asks {
		levels = append(levels, ta.Level{Side: ta.Offer, Price: l.Price(), Quantity: l.Quantity()})
	}
	began := time.Now()
	if err := b.levels.Snapshot(levels); err != nil {
		e.log.WarnContext(ctx, "book snapshot rejected", "series", id.String(), "err", err)
		return nil
	}
	m, err := b.levels.Metrics(u.plan.Book.DepthBps)
	e.metrics.observeCompute(ctx, time.Since(began), "book")
	if errors.Is(err, ta.ErrBookEmpty) {
		return nil
	}
	if err != nil {
		return err
	}
	values, ok := catalog.BookFields(m)
	if !ok {
		return nil
	}
	up := contract.IndicatorUpdate{SeriesID: id, Start: minute, Version: version, Close: m.Mid, Values: values}
	if err := e.emit(ctx, []contract.IndicatorUpdate{up}); err != nil {
		return err
	}
	b.open, b.last = minute, up
	return nil
}

// closeMinute writes and publishes the open minute's last values as
// closed. The caller holds e.mu.
func (e *Engine) closeMinute(ctx context.Context, b *book) error {
	up := b.last
	up.Closed = true
	up.Version++ // replaces the in-progress point of the same bar
	if err := e.emit(ctx, []contract.IndicatorUpdate{up}); err != nil {
		return err
	}
	b.closed, b.open = b.open, 0
	return nil
}

// CloseMinutes closes every open minute that ended more than
// MinuteCloseGrace before now without a snapshot of a later minute.
func (e *Engine) CloseMinutes(ctx context.Context, now time.Time) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for id, b := range e.books {
		if b.open == 0 || now.Before(time.Unix(b.open, 0).Add(time.Minute+MinuteCloseGrace)) {
			continue
		}
		if _, runs := e.runsBook(id); !runs {
			delete(e.books, id)
			continue
		}
		errs = append(errs, e.closeMinute(ctx, b))
	}
	return errors.Join(errs...)
}
