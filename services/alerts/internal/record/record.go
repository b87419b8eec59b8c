// Package record makes alerts durable: each alert is published on
// vigil.alert.<user>.<ruleId> to the stream VIGIL_ALERTS with Nats-Msg-Id =
// alert id, so the stream drops a repeat inside its duplicate window, and
// inserted into Postgres alert_events with ON CONFLICT (id) DO NOTHING, so
// the table keeps the first record of an alert id. A repeat of an alert
// (redelivery, failover) is therefore harmless.
package record

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/telemetry"
)

// Errors of Record, wrapping the cause.
var (
	// ErrPublish reports an alert the stream did not acknowledge.
	ErrPublish = errors.New("record: publish to " + contract.StreamAlerts)
	// ErrStore reports an alert Postgres did not store.
	ErrStore = errors.New("record: insert into alert_events")
)

// insertAlert stores an alert once per id.
const insertAlert = `INSERT INTO alert_events
	(id, user_id, user_token, rule_id, symbol, timeframe, bar_start, payload, fired_at)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
	ON CONFLICT (id) DO NOTHING`

// Recorder publishes and stores alerts.
type Recorder struct {
	js   jetstream.JetStream
	pool *pgxpool.Pool
}

// New returns a recorder publishing with js and storing with pool.
func New(js jetstream.JetStream, pool *pgxpool.Pool) *Recorder {
	return &Recorder{js: js, pool: pool}
}

// Record publishes a to VIGIL_ALERTS and waits for the stream's
// acknowledgement, then inserts it into alert_events. fresh is true when
// the row is new, false when an alert with a's id was stored before. The
// message carries ctx's trace context.
func (r *Recorder) Record(ctx context.Context, a contract.Alert) (fresh bool, err error) {
	body, err := json.Marshal(a)
	if err != nil {
		return false, fmt.Errorf("%w: alert %s: %w", ErrPublish, a.ID, err)
	}
	msg := nats.NewMsg(contract.AlertSubject(a.User, a.RuleID))
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, a.ID)
	telemetry.Inject(ctx, msg)
	if _, err := r.js.PublishMsg(ctx, msg); err != nil {
		return false, fmt.Errorf("%w: alert %s: %w", ErrPublish, a.ID, err)
	}
	tag, err := r.pool.Exec(ctx, insertAlert, a.ID, nullableID(a.UserID), a.User, a.RuleID, a.Symbol,
		string(a.Timeframe), time.Unix(a.BarStart, 0).UTC(), body, a.FiredAt)
	if err != nil {
		return false, fmt.Errorf("%w: alert %s: %w", ErrStore, a.ID, err)
	}
	return tag.RowsAffected() == 1, nil
}

// nullableID stores an unknown users.id (0) as NULL.
func nullableID(id int64) *int64 {
	if id <= 0 {
		return nil
	}
	return &id
}
