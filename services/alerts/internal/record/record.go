// Package record makes alerts durable: each alert is published on
// vigil.alert.<user>.<ruleId> to the stream VIGIL_ALERTS with Nats-Msg-Id =
// alert id, so the stream drops a repeat inside its duplicate window, and
// inserted into Postgres alert_events with ON CONFLICT (id) DO NOTHING, so
// the table keeps the first record of an alert id. A repeat of an alert
// (redelivery, failover, a batch recorded again after a failure) is
// therefore harmless.
//
// Alerts are recorded in batches: every alert of a batch is published
// asynchronously, the stream's acknowledgements are awaited together, and
// the batch is inserted in one statement.
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
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/telemetry"
)

// Errors of Record, wrapping the cause.
var (
	// ErrPublish reports an alert the stream did not acknowledge.
	ErrPublish = errors.New("record: publish to " + contract.StreamAlerts)
	// ErrStore reports alerts Postgres did not store.
	ErrStore = errors.New("record: insert into alert_events")
)

// PublishTimeout is how long Record waits for the stream to acknowledge
// a batch's alerts when ctx has no earlier deadline.
const PublishTimeout = 5 * time.Second

// insertAlerts stores a batch of alerts, each id once, and returns the ids
// of the new rows.
const insertAlerts = `INSERT INTO alert_events
	(id, user_id, user_token, rule_id, symbol, timeframe, bar_start, payload, fired_at)
	SELECT id, user_id, user_token, rule_id, symbol, timeframe, bar_start, payload::jsonb, fired_at
	FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::timestamptz[])
		AS a(id, user_id, user_token, rule_id, symbol, timeframe, bar_start, payload, fired_at)
	ON CONFLICT (id) DO NOTHING
	RETURNING id`

// Alert is an alert to record and the trace it continues.
type Alert struct {
	contract.Alert
	// Trace is the span context of the update that fired the alert; its
	// message continues that trace. When it is not valid the message
	// carries the trace context of Record's ctx.
	Trace trace.SpanContext
}

// Recorder publishes and stores alerts.
type Recorder struct {
	js   jetstream.JetStream
	pool *pgxpool.Pool
}

// New returns a recorder publishing with js and storing with pool.
func New(js jetstream.JetStream, pool *pgxpool.Pool) *Recorder {
	return &Recorder{js: js, pool: pool}
}

// Record publishes alerts to VIGIL_ALERTS, in order, and waits for the
// stream's acknowledgements, then inserts them into alert_events in one
// statement. fresh[i] is true when alerts[i] made a new row, false when
// an alert with its id was stored before (or earlier in alerts). On error
// nothing is known to be stored, and recording the same alerts again is
// safe.
func (r *Recorder) Record(ctx context.Context, alerts []Alert) (fresh []bool, err error) {
	if len(alerts) == 0 {
		return nil, nil
	}
	bodies := make([]string, len(alerts))
	acks := make([]jetstream.PubAckFuture, 0, len(alerts))
	for i, a := range alerts {
		body, err := json.Marshal(a.Alert)
		if err != nil {
			return nil, fmt.Errorf("%w: alert %s: %w", ErrPublish, a.ID, err)
		}
		bodies[i] = string(body)
		msg := nats.NewMsg(contract.AlertSubject(a.User, a.RuleID))
		msg.Data = body
		msg.Header.Set(jetstream.MsgIDHeader, a.ID)
		traced := ctx
		if a.Trace.IsValid() {
			traced = trace.ContextWithRemoteSpanContext(ctx, a.Trace)
		}
		telemetry.Inject(traced, msg)
		ack, err := r.js.PublishMsgAsync(msg)
		if err != nil {
			return nil, fmt.Errorf("%w: alert %s: %w", ErrPublish, a.ID, err)
		}
		acks = append(acks, ack)
	}
	if err := awaitAcks(ctx, alerts, acks); err != nil {
		return nil, err
	}
	return r.insert(ctx, alerts, bodies)
}

// awaitAcks waits for every acknowledgement, at most PublishTimeout.
func awaitAcks(ctx context.Context, alerts []Alert, acks []jetstream.PubAckFuture) error {
	ctx, cancel := context.WithTimeout(ctx, PublishTimeout)
	defer cancel()
	for i, ack := range acks {
		select {
		case <-ack.Ok():
		case err := <-ack.Err():
			return fmt.Errorf("%w: alert %s: %w", ErrPublish, alerts[i].ID, err)
		case <-ctx.Done():
			return fmt.Errorf("%w: alert %s: no acknowledgement: %w", ErrPublish, alerts[i].ID, ctx.Err())
		}
	}
	return nil
}

// insert stores alerts in one statement and reports which rows are new.
func (r *Recorder) insert(ctx context.Context, alerts []Alert, bodies []string) ([]bool, error) {
	n := len(alerts)
	ids, users, rules, symbols, tfs := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	userIDs := make([]*int64, n)
	bars, fired := make([]time.Time, n), make([]time.Time, n)
	for i, a := range alerts {
		ids[i], users[i], rules[i], symbols[i], tfs[i] = a.ID, a.User, a.RuleID, a.Symbol, string(a.Timeframe)
		userIDs[i] = nullableID(a.UserID)
		bars[i], fired[i] = time.Unix(a.BarStart, 0).UTC(), a.FiredAt
	}
	rows, err := r.pool.Query(ctx, insertAlerts, ids, userIDs, users, rules, symbols, tfs, bars, bodies, fired)
	if err != nil {
		return nil, fmt.Errorf("%w: %d alerts from %s: %w", ErrStore, n, ids[0], err)
	}
	inserted := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("%w: %d alerts from %s: %w", ErrStore, n, ids[0], err)
		}
		inserted[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%w: %d alerts from %s: %w", ErrStore, n, ids[0], err)
	}
	fresh := make([]bool, n)
	for i, id := range ids {
		fresh[i] = inserted[id]
		delete(inserted, id) // a repeat later in the batch is not new
	}
	return fresh, nil
}

// nullableID stores an unknown users.id (0) as NULL.
func nullableID(id int64) *int64 {
	if id <= 0 {
		return nil
	}
	return &id
}
