package record

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/wait"
)

// ProjectorConsumer is the durable consumer of VIGIL_ALERTS that every
// instance's Projector reads: each stored alert goes to one of them.
const ProjectorConsumer = "vigil-alerts-projector"

// ErrStore reports alerts Postgres did not store.
var ErrStore = errors.New("record: insert into alert_events")

// insertAlerts stores a batch of alerts, each id once.
const insertAlerts = `INSERT INTO alert_events
	(id, user_id, user_token, rule_id, symbol, timeframe, bar_start, payload, fired_at)
	SELECT id, user_id, user_token, rule_id, symbol, timeframe, bar_start, payload::jsonb, fired_at
	FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::timestamptz[])
		AS a(id, user_id, user_token, rule_id, symbol, timeframe, bar_start, payload, fired_at)
	ON CONFLICT (id) DO NOTHING`

// ProjectorOptions tune a Projector. Zero values take the defaults in
// brackets.
type ProjectorOptions struct {
	// Batch is the most alerts inserted in one statement [256].
	Batch int
	// AckWait is how long a delivered alert may stay unacknowledged before
	// the server delivers it again, to this or another instance [30s]; a
	// batch waiting for Postgres is reported in progress meanwhile.
	AckWait time.Duration
	// RetryBackoff is the first wait after a failed insert [100ms]; it
	// doubles with jitter up to MaxRetryBackoff [5s].
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// Log receives failures and alerts that cannot be decoded [slog.Default()].
	Log *slog.Logger
}

func (o *ProjectorOptions) setDefaults() {
	if o.Batch <= 0 {
		o.Batch = 256
	}
	if o.AckWait <= 0 {
		o.AckWait = 30 * time.Second
	}
	if o.RetryBackoff <= 0 {
		o.RetryBackoff = 100 * time.Millisecond
	}
	if o.MaxRetryBackoff < o.RetryBackoff {
		o.MaxRetryBackoff = max(5*time.Second, o.RetryBackoff)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
}

// Projector writes the alerts of VIGIL_ALERTS into alert_events.
type Projector struct {
	js   jetstream.JetStream
	pool *pgxpool.Pool
	opts ProjectorOptions
	// migrated is set once the schema is known to be current.
	migrated bool
}

// NewProjector returns a projector reading with js and writing with pool.
// The pool need not reach Postgres yet.
func NewProjector(js jetstream.JetStream, pool *pgxpool.Pool, opts ProjectorOptions) *Projector {
	opts.setDefaults()
	return &Projector{js: js, pool: pool, opts: opts}
}

// ConsumerConfig is the durable consumer every projector shares: from the
// stream's first alert (the inserts are idempotent), acknowledged one by
// one, redelivered without limit.
func (p *Projector) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ProjectorConsumer,
		Description:   "vigil-alerts: projects VIGIL_ALERTS into Postgres alert_events",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.opts.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 4 * p.opts.Batch,
		Metadata:      natsx.Versioned(1),
	}
}

// Run projects until ctx ends, then returns nil. Errors of NATS and
// Postgres are logged and retried; an alert that is not one is logged
// and terminated.
func (p *Projector) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		cons, err := retry(ctx, p.opts, "creating the projector's consumer", func() (jetstream.Consumer, error) {
			return natsx.EnsureConsumer(ctx, p.js, contract.StreamAlerts, p.ConsumerConfig(), natsx.LogTo(p.opts.Log))
		})
		if err != nil {
			return nil // ctx ended
		}
		p.consume(ctx, cons)
	}
	return nil
}

// consume projects what cons delivers until ctx ends or reading fails
// (the consumer or stream may be gone: Run creates it again).
func (p *Projector) consume(ctx context.Context, cons jetstream.Consumer) {
	for ctx.Err() == nil {
		batch, err := p.fetch(ctx, cons)
		switch {
		case err == nil:
			p.project(ctx, batch)
		case ctx.Err() != nil || errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded):
		default:
			p.opts.Log.WarnContext(ctx, "reading alerts to project failed", "err", err)
			wait.Sleep(ctx, p.opts.MaxRetryBackoff)
			return
		}
	}
}

// fetch waits up to a few seconds for an alert, then takes the ones
// already waiting behind it, up to Batch.
func (p *Projector) fetch(ctx context.Context, cons jetstream.Consumer) ([]jetstream.Msg, error) {
	wait := 5 * time.Second
	if d, ok := ctx.Deadline(); ok && time.Until(d) < wait {
		wait = max(time.Until(d), time.Millisecond)
	}
	first, err := cons.Next(jetstream.FetchMaxWait(wait))
	if err != nil {
		return nil, err
	}
	batch := []jetstream.Msg{first}
	if p.opts.Batch == 1 {
		return batch, nil
	}
	more, err := cons.FetchNoWait(p.opts.Batch - 1)
	if err != nil {
		return batch, nil // the first is worth projecting alone
	}
	for m := range more.Messages() {
		batch = append(batch, m)
	}
	return batch, nil
}

// project inserts batch, retrying until Postgres stores it or ctx ends,
// and acknowledges it. Undecodable messages are terminated.
func (p *Projector) project(ctx context.Context, batch []jetstream.Msg) {
	rows := make([]row, 0, len(batch))
	msgs := make([]jetstream.Msg, 0, len(batch))
	for _, m := range batch {
		var a contract.Alert
		if err := json.Unmarshal(m.Data(), &a); err != nil || a.ID == "" {
			p.opts.Log.ErrorContext(ctx, "not an alert in "+contract.StreamAlerts+", not projected", "subject", m.Subject(), "err", err)
			_ = m.Term()
			continue
		}
		rows = append(rows, row{alert: a, payload: string(m.Data())})
		msgs = append(msgs, m)
	}
	if len(rows) == 0 {
		return
	}
	stop := keepInProgress(msgs, p.opts.AckWait/3)
	_, err := retry(ctx, p.opts, "projecting alerts into alert_events", func() (struct{}, error) {
		return struct{}{}, p.insert(ctx, rows)
	})
	stop()
	if err != nil {
		return // ctx ended: the batch is delivered again
	}
	for _, m := range msgs {
		_ = m.Ack() // a lost ack redelivers an alert the insert ignores
	}
}

// row is one alert to insert and its payload as stored in the stream.
type row struct {
	alert   contract.Alert
	payload string
}

// insert stores rows in one statement, migrating the schema first once.
func (p *Projector) insert(ctx context.Context, rows []row) error {
	if !p.migrated {
		if err := db.Migrate(ctx, p.pool); err != nil {
			return err
		}
		p.migrated = true
	}
	n := len(rows)
	ids, users, rules, symbols, tfs, payloads := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	userIDs := make([]*int64, n)
	bars, fired := make([]time.Time, n), make([]time.Time, n)
	for i, r := range rows {
		a := r.alert
		ids[i], users[i], rules[i], symbols[i], tfs[i], payloads[i] = a.ID, a.User, a.RuleID, a.Symbol, string(a.Timeframe), r.payload
		userIDs[i] = nullableID(a.UserID)
		bars[i], fired[i] = time.Unix(a.BarStart, 0).UTC(), a.FiredAt
	}
	if _, err := p.pool.Exec(ctx, insertAlerts, ids, userIDs, users, rules, symbols, tfs, bars, payloads, fired); err != nil {
		return fmt.Errorf("%w: %d alerts from %s: %w", ErrStore, n, ids[0], err)
	}
	return nil
}

// keepInProgress tells the server every interval that msgs are still being
// worked on, until the returned stop is called.
func keepInProgress(msgs []jetstream.Msg, interval time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// retry calls op until it succeeds or ctx ends, logging each failure with
// what it does and waiting with exponential backoff between attempts.
func retry[T any](ctx context.Context, opts ProjectorOptions, what string, op func() (T, error)) (T, error) {
	exp := backoff.NewExponentialBackOff()
	exp.InitialInterval, exp.MaxInterval = opts.RetryBackoff, opts.MaxRetryBackoff
	notify := func(err error, wait time.Duration) {
		opts.Log.WarnContext(ctx, what+" failed, retrying", "wait", wait, "err", err)
	}
	return backoff.Retry(ctx, op, backoff.WithBackOff(exp), backoff.WithMaxElapsedTime(0), backoff.WithNotify(notify))
}

// nullableID stores an unknown users.id (0) as NULL.
func nullableID(id int64) *int64 {
	if id <= 0 {
		return nil
	}
	return &id
}
