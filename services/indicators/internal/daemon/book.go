package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/service"
	"vigil.dev/pkg/telemetry"
	"vigil.dev/services/indicators/internal/series"
)

// subscribeBooks subscribes to the feed's order-book snapshots (core
// NATS, every instance; the engine keeps only the series it owns).
func subscribeBooks(rt *service.Runtime, e *series.Engine) (*nats.Subscription, error) {
	sub, err := rt.NC.Subscribe(contract.BookSubjects, func(msg *nats.Msg) {
		ctx := telemetry.Extract(context.Background(), msg.Header)
		snap, err := decodeBook(msg.Subject, msg.Data)
		if err != nil {
			rt.Log.WarnContext(ctx, "book snapshot dropped", "subject", msg.Subject, "err", err)
			return
		}
		ctx, cancel := context.WithTimeout(ctx, handleTimeout)
		defer cancel()
		if err := e.HandleBook(ctx, snap); err != nil {
			rt.Log.ErrorContext(ctx, "book snapshot failed", "subject", msg.Subject, "err", err)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", contract.BookSubjects, err)
	}
	// Snapshots are absolute: under load, dropping old ones is harmless.
	if err := sub.SetPendingLimits(4096, 64<<20); err != nil {
		return nil, err
	}
	return sub, rt.NC.FlushTimeout(5 * time.Second)
}

// ErrBook reports a book message that is not a valid
// contract.BookSnapshot for its subject.
var ErrBook = errors.New("bad book snapshot")

// decodeBook decodes and validates a snapshot and checks that it belongs
// to the subject it came on.
func decodeBook(subject string, data []byte) (contract.BookSnapshot, error) {
	var b contract.BookSnapshot
	if err := json.Unmarshal(data, &b); err != nil {
		return b, fmt.Errorf("%w: %w", ErrBook, err)
	}
	if err := b.Validate(); err != nil {
		return b, fmt.Errorf("%w: %w", ErrBook, err)
	}
	if want := contract.BookSubject(b.User, b.ExchangeID, b.Symbol); subject != want {
		return b, fmt.Errorf("%w: snapshot of %s arrived on %s", ErrBook, want, subject)
	}
	return b, nil
}
