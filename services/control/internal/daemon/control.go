// Package daemon is vigil-control's wiring, the vigil-control service, the operator's control
// plane: it takes the runtime commands on vigil.cmd.<user>.<command>, acks
// them once durably recorded and runs each as an ordered sequence across the
// instances of the other services.
//
// The parts: intake (validate, record, ACK), ledger (the durable queue in
// the JetStream KV bucket VIGIL_QUEUE, and the projector of the audit
// records into Postgres command_log), executor (per-user queues on the owning instance,
// background jobs, results), sequences (the six commands), fanout (one step
// answered by every instance), desired (KV VIGIL_STATE) and directory
// (user lookup).
package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/micro"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/service"
	"vigil.dev/services/control/internal/desired"
	"vigil.dev/services/control/internal/directory"
	"vigil.dev/services/control/internal/executor"
	"vigil.dev/services/control/internal/fanout"
	"vigil.dev/services/control/internal/intake"
	"vigil.dev/services/control/internal/ledger"
	"vigil.dev/services/control/internal/sequences"
)

// Config is vigil-control's configuration.
type Config struct {
	config.NATS
	config.Service
	config.Redis
	config.Postgres
	Settings
}

// Settings are control's own settings.
type Settings struct {
	QueueLimit      int           `env:"VIGIL_CONTROL_QUEUE_LIMIT" was:"VIGIL_QUEUE_LIMIT" envDefault:"32" help:"queued commands per user; one more is rejected busy"`
	CommandsPerMin  int           `env:"VIGIL_COMMANDS_PER_MINUTE" envDefault:"600" help:"commands per user and minute each instance takes (pause and cancel excepted), as a burst refilled over the minute; one more is rejected busy; 0: no limit"`
	StepTimeout     time.Duration `env:"VIGIL_CONTROL_STEP_TIMEOUT" was:"VIGIL_STEP_TIMEOUT" envDefault:"5s" help:"how long a sequence step waits for every instance"`
	BackfillTimeout time.Duration `env:"VIGIL_CONTROL_BACKFILL_TIMEOUT" was:"VIGIL_BACKFILL_TIMEOUT" envDefault:"10m" help:"how long force-backfill waits for the feed, per timeframe"`
	BackfillBars    int           `env:"VIGIL_CONTROL_BACKFILL_BARS" was:"VIGIL_BACKFILL_BARS" envDefault:"1000" help:"force-backfill's default range, in bars of each timeframe"`
	PingWait        time.Duration `env:"VIGIL_CONTROL_PING_WAIT" was:"VIGIL_PING_WAIT" envDefault:"1s" help:"how long a step waits for the first $SRV.PING answer"`
	PingStall       time.Duration `env:"VIGIL_CONTROL_PING_STALL" was:"VIGIL_PING_STALL" envDefault:"100ms" help:"a step stops discovering instances after this long without a new $SRV.PING answer"`
	SweepInterval   time.Duration `env:"VIGIL_CONTROL_SWEEP_INTERVAL" was:"VIGIL_SWEEP_INTERVAL" envDefault:"2s" help:"how often the command log is searched for work of dead or silent instances"`
	MaxJobs         int           `env:"VIGIL_CONTROL_MAX_JOBS_PER_USER" was:"VIGIL_MAX_JOBS_PER_USER" envDefault:"2" help:"force-backfill jobs running at once per user"`
	MaxSymbols      int           `env:"VIGIL_MAX_SYMBOLS" envDefault:"50" help:"symbols per user"`
	MaxRules        int           `env:"VIGIL_MAX_RULES" envDefault:"200" help:"alert rules per user"`
	UserCacheTTL    time.Duration `env:"VIGIL_CONTROL_USER_CACHE_TTL" was:"VIGIL_USER_CACHE_TTL" envDefault:"1m" help:"how long a user lookup is cached (reload-settings refreshes it)"`
	Migrate         bool          `env:"VIGIL_CONTROL_DB_MIGRATE" was:"VIGIL_DB_MIGRATE" envDefault:"true" help:"apply the database migrations at start"`
	SeedStates      bool          `env:"VIGIL_CONTROL_SEED_STATES" was:"VIGIL_SEED_STATES" envDefault:"true" help:"at start, write the initial desired state of every user that has none"`
	TenantInboxes   bool          `env:"VIGIL_CONTROL_TENANT_INBOXES" was:"VIGIL_TENANT_INBOXES" envDefault:"false" help:"answer a command of user u only on a reply subject under _INBOX_<u>. or VIGIL_CONTROL_OPERATOR_INBOXES (turn on with per-tenant inbox prefixes)"`
	OperatorInboxes []string      `env:"VIGIL_CONTROL_OPERATOR_INBOXES" was:"VIGIL_OPERATOR_INBOXES" envDefault:"_INBOX." envSeparator:"," help:"inbox prefixes (comma-separated, each ending in .) of operators that may command every user, with VIGIL_CONTROL_TENANT_INBOXES"`
}

// Validate checks control's settings.
func (s Settings) Validate() error {
	for _, v := range []struct {
		name string
		ok   bool
	}{
		{"VIGIL_CONTROL_QUEUE_LIMIT", s.QueueLimit > 0}, {"VIGIL_CONTROL_STEP_TIMEOUT", s.StepTimeout > 0},
		{"VIGIL_CONTROL_BACKFILL_TIMEOUT", s.BackfillTimeout > 0},
		{"VIGIL_CONTROL_BACKFILL_BARS", s.BackfillBars > 0 && s.BackfillBars <= contract.MaxBackfillBars},
		{"VIGIL_CONTROL_PING_WAIT", s.PingWait > 0}, {"VIGIL_CONTROL_PING_STALL", s.PingStall > 0},
		{"VIGIL_CONTROL_SWEEP_INTERVAL", s.SweepInterval > 0}, {"VIGIL_CONTROL_MAX_JOBS_PER_USER", s.MaxJobs > 0},
		{"VIGIL_MAX_SYMBOLS", s.MaxSymbols > 0}, {"VIGIL_MAX_RULES", s.MaxRules > 0},
		{"VIGIL_CONTROL_USER_CACHE_TTL", s.UserCacheTTL > 0}, {"VIGIL_COMMANDS_PER_MINUTE", s.CommandsPerMin >= 0},
	} {
		if !v.ok {
			return fmt.Errorf("%s: must be positive (VIGIL_COMMANDS_PER_MINUTE may be 0, VIGIL_CONTROL_BACKFILL_BARS at most %d)", v.name, contract.MaxBackfillBars)
		}
	}
	for _, p := range s.OperatorInboxes {
		if p == "" || !strings.HasSuffix(p, ".") || strings.ContainsAny(p, " *>") {
			return fmt.Errorf("VIGIL_CONTROL_OPERATOR_INBOXES: %q must be a subject prefix ending in \".\" without wildcards", p)
		}
	}
	return nil
}

// Limits are the contract limits of these settings.
func (s Settings) Limits() contract.Limits {
	return contract.Limits{MaxSymbols: s.MaxSymbols, MaxRules: s.MaxRules}
}

// Validate checks every part of the configuration.
func (c Config) Validate() error {
	return config.ValidateAll(c.NATS, c.Service, c.Redis, c.Postgres, c.Settings)
}

// Run runs vigil-control until ctx ends: it loads the configuration from
// the environment (-h in args lists it) and serves.
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	var cfg Config
	if err := config.Load(&cfg, contract.ServiceControl, "the operator's control plane", args, stdout); err != nil {
		return err
	}
	return Serve(ctx, cfg, stdout)
}

// Serve runs one vigil-control instance with cfg until ctx ends, then shuts
// down (pkg/service): the endpoints stop, running jobs go back to the
// queue, running commands finish (or fail when the time is up), the
// instance leaves the group and the connection drains.
func Serve(ctx context.Context, cfg Config, stdout io.Writer) error {
	rt, err := service.Boot(ctx, contract.ServiceControl, cfg.Service, cfg.NATS, &cfg, stdout)
	if err != nil {
		return err
	}
	return rt.Serve(ctx, func(ctx context.Context) error {
		// The parts run until Shutdown, not until ctx ends (see start).
		_, err := start(context.WithoutCancel(ctx), cfg, rt, options{})
		return err
	})
}

// migrateWhenReachable applies the database migrations, retrying with
// backoff (1 s doubling up to 30 s) until they are applied or ctx ends.
func migrateWhenReachable(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) {
	for delay := time.Second; ; delay = min(2*delay, 30*time.Second) {
		err := db.Migrate(ctx, pool)
		if err == nil {
			log.Info("database migrations applied")
			return
		}
		log.Warn("database migrations not applied; retrying", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// options are the parts of an instance that tests replace.
type options struct {
	// Membership tunes this instance's heartbeats (defaults when zero).
	Membership membership.Options
	// ServiceTimeout is when another service's instance counts as dead
	// after its last heartbeat (membership.DefaultTimeout when zero).
	ServiceTimeout time.Duration
}

// instance is a running vigil-control instance.
type instance struct {
	svc     *service.Service
	group   *membership.Group
	members *membership.Roster
	exec    *executor.Executor
	ledger  *ledger.Ledger
	users   *directory.Directory
	// projector writes command_log from the audit records.
	projector *ledger.Projector
	log       *slog.Logger
	started   time.Time
}

// start opens PostgreSQL and Redis and starts the instance's parts on rt:
// the micro service with the command and status endpoints, membership,
// the executor. They run until Shutdown; when ctx ends they stop at once
// without writing anything more, as if the process had crashed (tests use
// this to kill an instance).
func start(ctx context.Context, cfg Config, rt *service.Runtime, opts options) (*instance, error) {
	s := cfg.Settings
	// PostgreSQL holds the users (cached in VIGIL_USERS) and the audit
	// projection command_log: the instance starts while it is down, reports
	// it degraded, and migrates once it is reachable.
	pool, err := db.Open(cfg.Postgres)
	if err != nil {
		return nil, err
	}
	rt.OnClose(pool.Close)
	rt.Health.AddDegraded("postgres", func(ctx context.Context) error { return pool.Ping(ctx) })
	// Redis is only cleared by clear-cache: not a readiness check here.
	rdb, err := redisstore.Open(ctx, cfg.Redis)
	if err != nil {
		return nil, err
	}
	rt.OnClose(func() { _ = rdb.Close() })
	inst := &instance{log: rt.Log, started: time.Now().UTC()}
	if err := natsx.EnsureControl(ctx, rt.JS, natsx.LogTo(rt.Log)); err != nil {
		return nil, err
	}
	svc, err := rt.Start(service.Config{Description: "vigil control: the operator's control plane"}, nil)
	if err != nil {
		return nil, err
	}
	inst.svc = svc
	if cfg.Migrate {
		svc.Go(func(ctx context.Context) error { migrateWhenReachable(ctx, pool, rt.Log); return nil })
	}
	if opts.Membership.Log == nil {
		opts.Membership.Log = rt.Log
	}
	if inst.group, err = membership.Join(ctx, rt.JS, contract.ServiceControl, svc.ID(), opts.Membership); err != nil {
		return nil, err
	}
	svc.OnShutdown(inst.group.Leave)
	if inst.members, err = membership.WatchRoster(ctx, rt.JS, opts.ServiceTimeout); err != nil {
		return nil, err
	}
	svc.OnShutdown(func(context.Context) error { inst.members.Stop(); return nil })
	states, err := desired.Open(ctx, rt.JS)
	if err != nil {
		return nil, err
	}
	var running atomic.Pointer[executor.Executor]
	out := streams{js: rt.JS}
	results, err := ledger.OpenResultIndex(ctx, rt.JS, rt.Log)
	if err != nil {
		return nil, err
	}
	svc.OnShutdown(func(context.Context) error { results.Stop(); return nil })
	if inst.ledger, err = ledger.Open(ctx, rt.JS, ledger.Options{OnChange: func(user string) {
		if e := running.Load(); e != nil {
			e.Kick(user)
		}
	}, Settled: results.Settled}); err != nil {
		return nil, err
	}
	svc.OnShutdown(func(context.Context) error { inst.ledger.Stop(); return nil })
	usersKV, err := rt.JS.KeyValue(ctx, natsx.BucketUsers)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", natsx.BucketUsers, err)
	}
	users := directory.New(pool, usersKV, s.UserCacheTTL, rt.Log)
	inst.users = users
	projector, err := ledger.StartProjector(ctx, rt.JS, pool, rt.Log)
	if err != nil {
		return nil, err
	}
	inst.projector = projector
	rt.Health.AddDegraded("audit", projector.Ready)
	stopProjector := context.AfterFunc(ctx, projector.Stop)
	svc.OnShutdown(func(context.Context) error {
		if stopProjector() {
			projector.Stop()
		}
		return nil
	})
	runner := sequences.New(sequences.Deps{
		Steps:    fanout.NewCaller(rt.NC, inst.members, fanout.Options{PingWait: s.PingWait, PingStall: s.PingStall}),
		States:   states,
		Users:    users,
		Cache:    redisstore.New(rdb, 0),
		Progress: out,
		Log:      rt.Log,
	}, sequences.Config{Limits: s.Limits(), StepTimeout: s.StepTimeout, BackfillTimeout: s.BackfillTimeout, BackfillBars: s.BackfillBars})
	exec, err := executor.New(executor.Config{Limits: s.Limits(), MaxJobs: s.MaxJobs, MaxAttempts: 3, SweepInterval: s.SweepInterval},
		inst.ledger, runner, inst.group, out, rt.NC, rt.Log)
	if err != nil {
		return nil, err
	}
	inst.exec = exec
	if err := exec.Start(ctx); err != nil {
		return nil, err
	}
	running.Store(exec)
	svc.OnShutdown(exec.Stop)
	in, err := intake.New(intake.Config{Limits: s.Limits(), QueueLimit: s.QueueLimit,
		TenantInboxes: s.TenantInboxes, OperatorInboxes: s.OperatorInboxes, CommandsPerMinute: s.CommandsPerMin}, inst.ledger, users, exec, rt.Log)
	if err != nil {
		return nil, err
	}
	if err := inst.registerMetrics(ctx); err != nil {
		return nil, err
	}
	m := svc.Micro()
	if err := m.AddEndpoint("command", micro.HandlerFunc(in.Handle),
		micro.WithEndpointSubject(contract.CommandSubjects), micro.WithEndpointQueueGroup(contract.ServiceControl),
		micro.WithEndpointMetadata(map[string]string{"description": "operator commands: pause, resume, reload-settings, switch-mode, force-backfill, clear-cache, cancel"})); err != nil {
		return nil, fmt.Errorf("command endpoint: %w", err)
	}
	if err := m.AddEndpoint("status", micro.HandlerFunc(inst.status),
		micro.WithEndpointSubject(StatusSubject), micro.WithEndpointQueueGroupDisabled()); err != nil {
		return nil, fmt.Errorf("status endpoint: %w", err)
	}
	if err := rt.NC.Flush(); err != nil {
		return nil, fmt.Errorf("flush: %w", err)
	}
	if s.SeedStates {
		go inst.seed(ctx, users, runner)
	}
	return inst, nil
}

// ID is the instance's micro service id, its name in membership and in
// command_log.control_instance.
func (i *instance) ID() string { return i.svc.ID() }

// seed writes the initial desired state of every user without one.
func (i *instance) seed(ctx context.Context, users *directory.Directory, runner *sequences.Runner) {
	tokens, err := users.Tokens(ctx)
	if err != nil {
		i.log.Warn("desired states not seeded", "err", err)
		return
	}
	for _, t := range tokens {
		if contract.ValidateUserToken(t) != nil {
			i.log.Warn("user token unusable in subjects; not seeded", "token", t)
			continue
		}
		wrote, err := runner.Seed(ctx, t)
		switch {
		case err != nil:
			i.log.Warn("desired state not seeded", "user", t, "err", err)
		case wrote:
			i.log.Info("desired state seeded from users.settings", "user", t)
		}
	}
}
