package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/wait"
)

// ProjectorDurable is the durable consumer of VIGIL_COMMANDS that every
// control instance pulls from to project the audit records.
const ProjectorDurable = "command-log"

// AuditMsgID is the Nats-Msg-Id of e's audit record: one per state and
// attempt, so a record published again (after a crash) is dropped.
func AuditMsgID(e Entry) string {
	return e.User + "/" + e.ID + "/" + e.State() + "/" + strconv.Itoa(e.Attempts)
}

// PublishAudit publishes e as an audit record on vigil.ctl.log.<user>
// (stream VIGIL_COMMANDS) and waits for the stream's acknowledgement.
func PublishAudit(ctx context.Context, js jetstream.JetStream, e Entry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("%w: encode audit record of %s: %w", ErrStore, e.ID, err)
	}
	msg := nats.NewMsg(natsx.CommandLogSubject(e.User))
	msg.Data = b
	msg.Header.Set(jetstream.MsgIDHeader, AuditMsgID(e))
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("%w: publish audit record of %s: %w", ErrStore, e.ID, err)
	}
	return nil
}

// Projector writes the audit records of VIGIL_COMMANDS into PostgreSQL
// command_log, one upsert keyed by (user_token, id) per record. A record
// is acknowledged only after its upsert committed; while PostgreSQL is
// down the records wait in the stream (redelivered with backoff), so the
// table catches up by itself. A final record is never overwritten, and a
// running record never replaces a final one, so records may arrive in any
// order and more than once. When its durable consumer is deleted (by an
// operator, or with a lost stream) the projector creates it again.
type Projector struct {
	js   jetstream.JetStream
	pool *pgxpool.Pool
	log  *slog.Logger
	// stopCtx ends with Stop; it bounds the re-creation of a lost consumer.
	stopCtx context.Context
	stop    context.CancelFunc
	// lost is set from the loss of the consumer until it is consuming again.
	lost atomic.Bool

	mu sync.Mutex
	cc jetstream.ConsumeContext
}

// StartProjector creates (or reuses) the durable consumer and projects
// until Stop.
func StartProjector(ctx context.Context, js jetstream.JetStream, pool *pgxpool.Pool, log *slog.Logger) (*Projector, error) {
	p := &Projector{js: js, pool: pool, log: log}
	p.stopCtx, p.stop = context.WithCancel(context.Background())
	if err := p.consume(ctx); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// consume creates (or reuses) the durable consumer and starts consuming.
func (p *Projector) consume(ctx context.Context) error {
	cons, err := natsx.EnsureConsumer(ctx, p.js, natsx.StreamCommands, jetstream.ConsumerConfig{
		Durable:       ProjectorDurable,
		Description:   "vigil-control: projects command audit records into PostgreSQL command_log",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 1000,
		Metadata:      natsx.Versioned(1),
	}, natsx.LogTo(p.log))
	if err != nil {
		return fmt.Errorf("%w: consumer %s: %w", ErrStore, ProjectorDurable, err)
	}
	cc, err := cons.Consume(p.handle, jetstream.ConsumeErrHandler(p.consumeErr))
	if err != nil {
		return fmt.Errorf("%w: consume %s: %w", ErrStore, ProjectorDurable, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopCtx.Err() != nil {
		cc.Stop()
		return p.stopCtx.Err()
	}
	p.cc = cc
	return nil
}

// consumeErr starts re-creating the consumer when the server says it is
// gone; other errors (missed heartbeats while NATS is away) the consume
// loop recovers from by itself.
func (p *Projector) consumeErr(_ jetstream.ConsumeContext, err error) {
	if !errors.Is(err, jetstream.ErrConsumerDeleted) && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return
	}
	if p.lost.Swap(true) {
		return
	}
	p.log.Warn("the command_log projector's consumer was lost; creating it again", "consumer", ProjectorDurable, "err", err)
	go p.recreate()
}

// recreate stops the lost consume loop and consumes again, retrying every
// second until it succeeds or the projector stops.
func (p *Projector) recreate() {
	p.mu.Lock()
	if p.cc != nil {
		p.cc.Stop()
	}
	p.mu.Unlock()
	for p.stopCtx.Err() == nil {
		ctx, cancel := context.WithTimeout(p.stopCtx, 10*time.Second)
		err := p.consume(ctx)
		cancel()
		if err == nil {
			p.lost.Store(false)
			p.log.Info("the command_log projector consumes again", "consumer", ProjectorDurable)
			return
		}
		if !wait.Sleep(p.stopCtx, time.Second) {
			return
		}
	}
}

// Ready reports an error while the projector's consumer is lost and being
// created again (commands still run; command_log lags until it is back).
func (p *Projector) Ready(context.Context) error {
	if p.lost.Load() {
		return fmt.Errorf("consumer %s was lost and is being created again", ProjectorDurable)
	}
	return nil
}

// Stop stops projecting; unacknowledged records are delivered again.
func (p *Projector) Stop() {
	p.stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cc != nil {
		p.cc.Stop()
	}
}

// handle upserts one record; a database failure leaves it to a later
// delivery.
func (p *Projector) handle(m jetstream.Msg) {
	var e Entry
	if err := json.Unmarshal(m.Data(), &e); err != nil || e.ID == "" || e.User == "" {
		p.log.Error("audit record dropped: not an entry", "subject", m.Subject(), "err", err)
		_ = m.Term()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Project(ctx, p.pool, e); err != nil {
		delay := time.Second
		if md, mdErr := m.Metadata(); mdErr == nil {
			delay = min(time.Duration(md.NumDelivered)*time.Second, 15*time.Second)
		}
		p.log.Warn("command_log not written; retried", "id", e.ID, "user", e.User, "err", err, "retry_in", delay)
		_ = m.NakWithDelay(delay)
		return
	}
	if err := m.Ack(); err != nil {
		p.log.Warn("audit record not acknowledged; it is projected again", "id", e.ID, "err", err)
	}
}

// Project upserts e into command_log.
func Project(ctx context.Context, pool *pgxpool.Pool, e Entry) error {
	ack, err := json.Marshal(e.Ack())
	if err != nil {
		return err
	}
	payload := string(e.Payload)
	if payload == "" {
		payload = "{}"
	}
	var userID *int64
	if e.UserID != 0 {
		userID = &e.UserID
	}
	var instance *string
	if e.Instance != "" {
		instance = &e.Instance
	}
	var result, errJSON, steps *string
	var finishedAt *time.Time
	traceID := e.TraceID
	if e.Ended != nil {
		r := e.Result()
		if len(r.Result) > 0 {
			s := string(r.Result)
			result = &s
		}
		if r.Error != nil {
			b, err := json.Marshal(r.Error)
			if err != nil {
				return err
			}
			s := string(b)
			errJSON = &s
		}
		b, err := json.Marshal(r.Steps)
		if err != nil {
			return err
		}
		s := string(b)
		steps, finishedAt, traceID = &s, &r.FinishedAt, r.TraceID
	}
	_, err = pool.Exec(ctx, `
		INSERT INTO command_log AS c (id, user_token, user_id, command, payload, operator, status, priority,
			control_instance, result, error, steps, trace_id, trace_parent, accepted_at, started_at, finished_at,
			seq, ack, attempts, published_at, operator_name)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, nullif($13, ''), nullif($14, ''), $15, $16, $17,
			$18, $19, $20, CASE WHEN $17::timestamptz IS NULL THEN NULL ELSE clock_timestamp() END, $21)
		ON CONFLICT (user_token, id) DO UPDATE SET
			status = EXCLUDED.status, control_instance = coalesce(EXCLUDED.control_instance, c.control_instance),
			result = EXCLUDED.result, error = EXCLUDED.error, steps = EXCLUDED.steps,
			trace_id = coalesce(EXCLUDED.trace_id, c.trace_id),
			started_at = coalesce(EXCLUDED.started_at, c.started_at), finished_at = EXCLUDED.finished_at,
			attempts = greatest(EXCLUDED.attempts, c.attempts), published_at = EXCLUDED.published_at
		WHERE c.finished_at IS NULL AND (EXCLUDED.finished_at IS NOT NULL OR EXCLUDED.attempts >= c.attempts)`,
		e.ID, e.User, userID, string(e.Command), payload, e.Operator, e.State(), e.Priority,
		instance, result, errJSON, steps, traceID, e.TraceParent, e.AcceptedAt, e.StartedAt, finishedAt,
		e.Seq, string(ack), e.Attempts, e.OperatorName)
	if err != nil {
		return fmt.Errorf("upsert command_log %s of %s: %w", e.ID, e.User, err)
	}
	return nil
}
