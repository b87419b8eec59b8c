// Package daemon is vigil-indicators' wiring, the vigil-indicators service: it consumes candle
// updates from VIGIL_CANDLES and order-book snapshots from vigil.book.>,
// keeps incremental TA-Lib-exact indicator state for the series this
// instance owns (pkg/membership, key SeriesID.String()), stores the values
// in Redis and publishes them on vigil.indicator.> for alerts. It follows
// the users' desired state in KV VIGIL_STATE and answers the
// vigil.svc.indicators.* control verbs.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/service"
	"vigil.dev/services/indicators/internal/series"
)

// Config is vigil-indicators's configuration.
type Config struct {
	config.NATS
	config.Service
	config.Redis
	// Retention is how many bars each indicator series keeps in Redis.
	Retention int `env:"VIGIL_INDICATORS_RETENTION" was:"VIGIL_INDICATOR_RETENTION" envDefault:"1000" help:"bars kept per indicator series in Redis"`
}

// publishAckTimeout is how long a published indicator update waits for the
// stream's acknowledgement before its candle counts as failed.
const publishAckTimeout = 5 * time.Second

// ErrRetention reports a retention out of range.
var ErrRetention = errors.New("VIGIL_INDICATORS_RETENTION: must be between 10 and 100000")

// Validate checks every part of the configuration.
func (c Config) Validate() error {
	if c.Retention < 10 || c.Retention > 100_000 {
		return ErrRetention
	}
	return config.ValidateAll(c.NATS, c.Service, c.Redis)
}

// Run runs vigil-indicators until ctx ends: it loads the configuration
// from the environment (-h in args lists it) and serves.
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	var cfg Config
	if err := config.Load(&cfg, contract.ServiceIndicators, "keeps incremental indicator series per candle series", args, stdout); err != nil {
		return err
	}
	return Serve(ctx, cfg, stdout)
}

// Serve runs one vigil-indicators instance with cfg until ctx ends, then
// shuts down (pkg/service): it stops consuming after the update in flight,
// leaves the membership so its series move at once, and drains the
// connection.
func Serve(ctx context.Context, cfg Config, stdout io.Writer) error {
	rt, err := service.Boot(ctx, contract.ServiceIndicators, cfg.Service, cfg.NATS, &cfg, stdout)
	if err != nil {
		return err
	}
	return rt.Serve(ctx, func(ctx context.Context) error { return start(ctx, cfg, rt) })
}

// start opens Redis and starts the instance's parts.
func start(ctx context.Context, cfg Config, rt *service.Runtime) error {
	rdb, err := rt.OpenRedis(ctx, cfg.Redis)
	if err != nil {
		return err
	}
	var eng atomic.Pointer[series.Engine]
	svc, err := rt.Start(service.Config{Svc: contract.SvcIndicators,
		Description: "vigil indicators: keeps incremental indicator series per candle series", Verbs: verbs},
		func(_ context.Context, user string) any {
			if e := eng.Load(); e != nil {
				return e.Status(user)
			}
			return map[string]any{"instance": rt.Instance, "starting": true}
		})
	if err != nil {
		return err
	}
	id := svc.ID()
	members, err := membership.Join(ctx, rt.JS, contract.ServiceIndicators, id, membership.Options{Log: rt.Log})
	if err != nil {
		return err
	}
	svc.OnShutdown(members.Leave)
	// The engine publishes on a JetStream context of its own whose
	// asynchronous publishes give up when unacknowledged for long.
	updates, err := jetstream.New(rt.NC, jetstream.WithPublishAsyncTimeout(publishAckTimeout))
	if err != nil {
		return fmt.Errorf("jetstream for indicator updates: %w", err)
	}
	// The consumer claims its partitions before the state is read and the
	// series are rebuilt, so every candle published after that rebuild's
	// read is delivered; it consumes once the state is followed.
	store := redisstore.New(rdb, cfg.Retention)
	c, err := newCandleConsumer(ctx, rt, members, cfg.PartitionCount(), store)
	if err != nil {
		return err
	}
	rt.Health.Add("consumer", c.Ready)
	e, err := series.New(series.Config{Store: store, JS: updates, Owner: c, Instance: id, Name: rt.Instance, Log: rt.Log})
	if err != nil {
		return errors.Join(err, c.Stop(ctx))
	}
	c.engine = e
	// Shutdown runs these in reverse: the consumer stops first, then the
	// rebuilds its candles started end, then the minutes stop closing.
	svc.Go(func(ctx context.Context) error { closeMinutes(ctx, rt, e); return nil })
	svc.OnShutdown(e.Close)
	svc.OnShutdown(c.Stop)
	c.Claim(ctx)
	if err := svc.FollowStates(ctx, rt.JS, applyState(rt, e)); err != nil {
		return err
	}
	eng.Store(e)
	if err := handleVerbs(svc, e); err != nil {
		return err
	}
	sub, err := subscribeBooks(rt, e)
	if err != nil {
		return err
	}
	svc.OnShutdown(func(context.Context) error { return sub.Unsubscribe() })
	return c.Start(ctx)
}

// closeMinutes closes the order-book minutes that saw no snapshot of a
// later minute, every second.
func closeMinutes(ctx context.Context, rt *service.Runtime, e *series.Engine) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if err := e.CloseMinutes(ctx, now); err != nil && ctx.Err() == nil {
				rt.Log.Error("closing order-book minutes failed", "err", err)
			}
		}
	}
}

// errArgs reports missing verb arguments.
var errArgs = contract.FieldError{Field: "args", Problem: "is required"}

// verbs are the control verbs of indicators (besides status).
var verbs = []contract.Verb{contract.VerbPause, contract.VerbResume, contract.VerbApply, contract.VerbRecompute, contract.VerbForget, contract.VerbPlan}

// plan answers vigil.svc.indicators.plan: what apply, recompute or forget
// would do on this instance, changing nothing.
func plan(e *series.Engine, req contract.SvcRequest) (any, error) {
	if len(req.Args) == 0 {
		return nil, errArgs
	}
	args, err := contract.DecodePeer[contract.PlanArgs](req.Args)
	if err != nil {
		return nil, err
	}
	switch args.Verb {
	case contract.VerbApply:
		if req.State == nil {
			return nil, contract.FieldError{Field: "state", Problem: "is required"}
		}
		return e.PlanApply(req.User, *req.State)
	case contract.VerbRecompute:
		a, err := contract.DecodePeer[contract.RecomputeArgs](orEmpty(args.Args))
		if err != nil {
			return nil, fmt.Errorf("args.args: %w", err)
		}
		if a.Series.User == "" {
			a.Series.User = req.User
		}
		return e.PlanRecompute(a.Series)
	case contract.VerbForget:
		a, err := contract.DecodePeer[contract.ForgetArgs](orEmpty(args.Args))
		if err != nil {
			return nil, fmt.Errorf("args.args: %w", err)
		}
		return e.PlanForget(a)
	}
	return nil, contract.FieldError{Field: "args.verb", Problem: fmt.Sprintf("%q has no plan in vigil-indicators (apply, recompute, forget)", args.Verb)}
}

func orEmpty(b []byte) []byte {
	if len(b) == 0 {
		return []byte("{}")
	}
	return b
}

// handleVerbs gives the control verbs their handlers (status is answered
// by service.Start).
func handleVerbs(svc *service.Service, e *series.Engine) error {
	requireUser := func(req contract.SvcRequest) error {
		if req.User == "" {
			return contract.FieldError{Field: "user", Problem: "is required"}
		}
		return nil
	}
	handlers := map[contract.Verb]service.Handler{
		contract.VerbPause: func(ctx context.Context, req contract.SvcRequest) (any, error) {
			if err := requireUser(req); err != nil {
				return nil, err
			}
			return e.Pause(ctx, req.User, req.State)
		},
		contract.VerbResume: func(ctx context.Context, req contract.SvcRequest) (any, error) {
			if err := requireUser(req); err != nil {
				return nil, err
			}
			return e.Resume(ctx, req.User, req.State)
		},
		contract.VerbApply: func(ctx context.Context, req contract.SvcRequest) (any, error) {
			if err := requireUser(req); err != nil {
				return nil, err
			}
			return e.Apply(ctx, req.User, req.State)
		},
		contract.VerbRecompute: func(ctx context.Context, req contract.SvcRequest) (any, error) {
			if len(req.Args) == 0 {
				return nil, errArgs
			}
			args, err := contract.DecodePeer[contract.RecomputeArgs](req.Args)
			if err != nil {
				return nil, err
			}
			if args.Series.User == "" {
				args.Series.User = req.User
			}
			return e.Recompute(ctx, args.Series)
		},
		contract.VerbForget: func(ctx context.Context, req contract.SvcRequest) (any, error) {
			if len(req.Args) == 0 {
				return nil, errArgs
			}
			args, err := contract.DecodePeer[contract.ForgetArgs](req.Args)
			if err != nil {
				return nil, err
			}
			return e.Forget(ctx, args)
		},
		contract.VerbPlan: func(_ context.Context, req contract.SvcRequest) (any, error) {
			if err := requireUser(req); err != nil {
				return nil, err
			}
			return plan(e, req)
		},
	}
	for _, verb := range verbs {
		if err := svc.Handle(verb, handlers[verb]); err != nil {
			return fmt.Errorf("verb %s: %w", verb, err)
		}
	}
	return nil
}
