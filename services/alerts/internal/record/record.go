// Package record makes alerts durable and projects them into Postgres.
//
// The stream VIGIL_ALERTS is the record of alerts. Recorder publishes each
// alert on the ingest subject vigil.alertin.<user>.<ruleId> with
// Nats-Msg-Id = alert id; the stream stores it as vigil.alert.<user>.<ruleId>
// unless the id is a duplicate inside the stream's window, and republishes
// only what it stored on that subject (pkg/natsx.AlertsStream), so a
// repeat of an alert (redelivery, failover, a batch recorded again after a
// failure) is neither stored nor seen twice by core subscribers. Recording
// never touches Postgres.
//
// Projector keeps alert_events as a projection of the stream: a durable
// consumer shared by every instance reads the stored alerts and inserts
// them with ON CONFLICT (id) DO NOTHING, acknowledging a batch only once
// Postgres stored it. A Postgres outage delays the table; it catches up
// when Postgres is back, and holds each alert id once.
package record

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/telemetry"
)

// ErrPublish reports an alert the stream did not acknowledge.
var ErrPublish = errors.New("record: publish to " + contract.StreamAlerts)

// PublishTimeout is how long Record waits for the stream to acknowledge
// a batch's alerts.
const PublishTimeout = 5 * time.Second

// Alert is an alert to record and the trace it continues.
type Alert struct {
	contract.Alert
	// Trace is the span context of the update that fired the alert; its
	// message continues that trace. When it is not valid the message
	// carries the trace context of Record's ctx.
	Trace trace.SpanContext
}

// Recorder publishes alerts to VIGIL_ALERTS.
type Recorder struct {
	js jetstream.JetStream
}

// New returns a recorder publishing with js.
func New(js jetstream.JetStream) *Recorder {
	return &Recorder{js: js}
}

// Record publishes alerts to VIGIL_ALERTS, in order, and waits for the
// stream's acknowledgements. fresh[i] is true when the stream stored
// alerts[i] now, false when it dropped it as a duplicate of an alert
// stored before (or earlier in alerts). On error fresh, when not nil,
// still tells which alerts were stored now (the others may or may not
// be), and recording the same alerts again is safe.
func (r *Recorder) Record(ctx context.Context, alerts []Alert) (fresh []bool, err error) {
	if len(alerts) == 0 {
		return nil, nil
	}
	acks := make([]jetstream.PubAckFuture, 0, len(alerts))
	for _, a := range alerts {
		msg, err := message(ctx, a)
		if err != nil {
			return nil, err
		}
		ack, err := r.js.PublishMsgAsync(msg)
		if err != nil {
			fresh, _ := awaitAcks(ctx, alerts, acks)
			return fresh, fmt.Errorf("%w: alert %s: %w", ErrPublish, a.ID, err)
		}
		acks = append(acks, ack)
	}
	return awaitAcks(ctx, alerts, acks)
}

// message is a's message on its ingest subject, with its id and trace.
func message(ctx context.Context, a Alert) (*nats.Msg, error) {
	body, err := json.Marshal(a.Alert)
	if err != nil {
		return nil, fmt.Errorf("%w: alert %s: %w", ErrPublish, a.ID, err)
	}
	msg := nats.NewMsg(contract.AlertIngestSubject(a.User, a.RuleID))
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, a.ID)
	if a.Trace.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, a.Trace)
	}
	telemetry.Inject(ctx, msg)
	return msg, nil
}

// awaitAcks waits for every acknowledgement, at most PublishTimeout, and
// reports which alerts were stored now and the first failure.
func awaitAcks(ctx context.Context, alerts []Alert, acks []jetstream.PubAckFuture) ([]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, PublishTimeout)
	defer cancel()
	fresh := make([]bool, len(acks))
	var first error
	for i, ack := range acks {
		select {
		case pa := <-ack.Ok():
			fresh[i] = !pa.Duplicate
		case err := <-ack.Err():
			if first == nil {
				first = fmt.Errorf("%w: alert %s: %w", ErrPublish, alerts[i].ID, err)
			}
		case <-ctx.Done():
			return fresh, fmt.Errorf("%w: alert %s: no acknowledgement: %w", ErrPublish, alerts[i].ID, ctx.Err())
		}
	}
	return fresh, first
}
