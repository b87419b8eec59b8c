// Package monitor runs the rule engines of the users that an instance of
// vigil-alerts owns, and delivers their alerts exactly once per event.
//
// # Users and ownership
//
// A user is known once their desired state (contract.DesiredState, from KV
// VIGIL_STATE or a control verb) has been seen; updates of unknown users are
// ignored. Of the known users the instance evaluates those it owns
// (Ownership, by user token). Gaining a user builds an engine for the rules
// of the desired mode, restores the engine memory the previous owner saved
// (Snapshots) and, unless the user is paused, catches up: it evaluates the
// latest closed bars of every rule series from the stored indicator values
// (History), so that an event published while no instance evaluated the
// user fires now. Losing a user drops the engine; its memory lives on in
// Snapshots.
//
// # Exactly one alert per event
//
// The engine fires at most once per rule and bar and names each alert
// deterministically, so an event evaluated twice (redelivery, two owners
// during a handover, a catch-up over bars evaluated before) yields the same
// alert id, which the Recorder stores once. Handle takes a batch of
// updates: it evaluates them in order per user, records every alert of the
// batch in one go (retrying until it succeeds, ctx ends or the user moves
// to another instance), then saves each touched user's engine memory once,
// when it changed; only then may the updates be acknowledged. When
// recording fails for good for a user, that user's engine memory is rolled
// back to before the batch, so a redelivery fires again. A new alert (the
// first record of its id) is counted; webhooks are sent from the stream.
//
// # Pause, resume, apply
//
// A paused user is not evaluated. Resuming forgets the remembered values
// (rules.Engine.ResetWarm), so rules fire only on transitions between bars
// seen after the resume. Applying installs the rules of the desired mode
// with rules.Engine.Replace; invalid rules are rejected as a whole and the
// running rules stay. The desired state converges the same way: a paused
// flag or rule set that differs from the running one is applied.
package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/alerts/internal/metrics"
	"vigil.dev/services/alerts/internal/record"
	"vigil.dev/services/alerts/internal/rules"
)

// Recorder makes a batch of alerts durable; fresh[i] is true when alerts[i]
// was recorded now, false when its id was recorded before. On error the
// batch must be recorded again, which must be safe; fresh, when not nil,
// still tells which alerts that attempt recorded.
type Recorder interface {
	Record(ctx context.Context, alerts []record.Alert) (fresh []bool, err error)
}

// Update is an indicator update to evaluate and the trace it arrived with.
type Update struct {
	contract.IndicatorUpdate
	// Trace is the span context of the update's producer; the alerts the
	// update fires continue it.
	Trace trace.SpanContext
}

// Snapshots keeps users' engine memory across instances.
type Snapshots interface {
	Load(ctx context.Context, user string) (snap rules.Snapshot, ok bool, err error)
	Save(ctx context.Context, user string, snap rules.Snapshot) error
}

// History rebuilds the updates of a series' closed bars starting at or
// after from, oldest first, with the named indicators.
type History interface {
	ClosedBars(ctx context.Context, series contract.SeriesID, indicators []string, from int64) ([]contract.IndicatorUpdate, error)
}

// Ownership tells whether this instance owns a user token.
type Ownership interface {
	Owns(key string) bool
}

// Deps are the monitor's ports; all are required.
type Deps struct {
	Recorder  Recorder
	Snapshots Snapshots
	History   History
	Ownership Ownership
}

// Options tune a monitor. Zero values take the defaults in brackets.
type Options struct {
	// Now is the clock of the engines [time.Now].
	Now func() time.Time
	// Log receives the monitor's events [slog.Default()].
	Log *slog.Logger
	// Metrics counts evaluations and alerts [the global meter provider].
	Metrics *metrics.Metrics
	// RetryBackoff is the first wait before recording an alert again
	// [100ms]; it doubles with jitter up to MaxRetryBackoff [5s].
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// MaxAlertsPerMinute bounds the alerts a user fires in a minute of
	// Now's clock; the ones beyond are suppressed: not recorded, counted
	// (Metrics.Suppressed, status alerts_suppressed) and logged once per
	// user and minute. 0 is no limit.
	MaxAlertsPerMinute int
}

// AlertsPerMinuteLimit names the per-user alert rate limit in logs and
// metrics; VIGIL_ALERTS_PER_MINUTE sets it.
const AlertsPerMinuteLimit = "alerts_per_minute"

// Errors of the monitor.
var (
	// ErrInvalidDeps reports a missing dependency or bad option.
	ErrInvalidDeps = errors.New("monitor: invalid dependencies")
	// ErrNotOwner reports work stopped because the user moved to another
	// instance.
	ErrNotOwner = errors.New("monitor: user is owned by another instance")
)

// catchUpBars is how many closed bars before the current one a catch-up
// evaluates: a closed bar stays fresh for two bars after its end (see
// package rules), so these are all the bars that can still fire.
const catchUpBars = 3

// Monitor runs the engines of the owned users. It is safe for concurrent
// use; the work on one user is serialised.
type Monitor struct {
	deps Deps
	opts Options

	mu    sync.Mutex
	users map[string]*user
}

// New checks deps and opts and returns a monitor without users.
func New(deps Deps, opts Options) (*Monitor, error) {
	if deps.Recorder == nil || deps.Snapshots == nil || deps.History == nil || deps.Ownership == nil {
		return nil, fmt.Errorf("%w: recorder, snapshots, history and ownership are required", ErrInvalidDeps)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Metrics == nil {
		m, err := metrics.New(nil)
		if err != nil {
			return nil, fmt.Errorf("%w: metrics: %w", ErrInvalidDeps, err)
		}
		opts.Metrics = m
	}
	if opts.RetryBackoff == 0 {
		opts.RetryBackoff = 100 * time.Millisecond
	}
	if opts.MaxRetryBackoff == 0 {
		opts.MaxRetryBackoff = 5 * time.Second
	}
	if opts.RetryBackoff < 0 || opts.MaxRetryBackoff < opts.RetryBackoff {
		return nil, fmt.Errorf("%w: retry backoff %s..%s must be positive and increasing", ErrInvalidDeps, opts.RetryBackoff, opts.MaxRetryBackoff)
	}
	return &Monitor{deps: deps, opts: opts, users: map[string]*user{}}, nil
}
