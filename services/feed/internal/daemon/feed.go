// Package daemon is vigil-feed's wiring, the vigil-feed service: it turns market data from a
// source (simulator, Coinbase, replay) into versioned candles of every
// user's symbols and timeframes, stored in Redis and published on
// JetStream, and order-book snapshots for users in the scalper-orderbook
// mode.
//
// Users are split between the feed instances by pkg/membership (group
// vigil-feed, key the user token). Each instance watches KV VIGIL_STATE and
// converges to the desired state of the users it owns: a user who is owned
// and not paused has their symbols attached to the engine (one upstream
// subscription per product however many users watch it) and, whenever that
// starts (start, failover, resume), the gap since their last stored candle
// of each series filled from history. The vigil.svc.feed.* verbs (pause,
// resume, apply, backfill, status) act at once and answer with their result;
// instances that do not own the user answer {"owner":false}.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"vigil.dev/pkg/candlewriter"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/service"
	"vigil.dev/services/feed/internal/candles"
	"vigil.dev/services/feed/internal/coinbase"
	"vigil.dev/services/feed/internal/replay"
	"vigil.dev/services/feed/internal/sim"
	"vigil.dev/services/feed/internal/source"
)

// MembershipGroup is the pkg/membership service name of the feed.
const MembershipGroup = "vigil-feed"

// Config is vigil-feed's configuration.
type Config struct {
	config.NATS
	config.Service
	config.Redis
	Source        string        `env:"VIGIL_FEED_SOURCE" envDefault:"sim" help:"market data source: sim, coinbase or replay"`
	Retention     int           `env:"VIGIL_FEED_CANDLE_RETENTION" was:"VIGIL_CANDLE_RETENTION" envDefault:"1000" help:"candles kept per series in Redis"`
	FlushInterval time.Duration `env:"VIGIL_FEED_FLUSH_INTERVAL" envDefault:"100ms" help:"how often bar updates are written and published"`
	QuietInterval time.Duration `env:"VIGIL_FEED_QUIET_INTERVAL" envDefault:"5s" help:"how often in-progress bars that none of a user's live rules needs are written and published (closed bars, and the timeframes of live rules, every flush)"`
	GapFillBars   int           `env:"VIGIL_FEED_GAP_FILL_BARS" was:"VIGIL_GAP_FILL_BARS" envDefault:"300" help:"most bars per series read from history when a user starts (start, failover, resume) or after a reconnect"`
	BookDepth     int           `env:"VIGIL_FEED_BOOK_DEPTH" was:"VIGIL_BOOK_DEPTH" envDefault:"50" help:"levels per side in order-book snapshots (scalper-orderbook)"`
	BookInterval  time.Duration `env:"VIGIL_FEED_BOOK_INTERVAL" was:"VIGIL_BOOK_INTERVAL" envDefault:"250ms" help:"least time between two order-book snapshots of a product"`
	BackfillMax   time.Duration `env:"VIGIL_FEED_BACKFILL_TIMEOUT" was:"VIGIL_BACKFILL_TIMEOUT" envDefault:"10m" help:"longest a backfill job may run"`

	SimSeed   uint64        `env:"VIGIL_SIM_SEED" envDefault:"1" help:"sim: random walk seed"`
	SimSpeed  float64       `env:"VIGIL_SIM_SPEED" envDefault:"60" help:"sim: sim seconds per wall second (60: a 1m bar closes every second)"`
	SimClock  string        `env:"VIGIL_SIM_CLOCK" envDefault:"ahead" help:"sim: ahead (sim time runs VIGIL_SIM_SPEED times as fast as the wall clock, bars dated in the future) or wall (replay VIGIL_SIM_REPLAY of the past at that speed, then follow the wall clock)"`
	SimReplay time.Duration `env:"VIGIL_SIM_REPLAY" envDefault:"15m" help:"sim: with VIGIL_SIM_CLOCK=wall, how much of the recent past is replayed at VIGIL_SIM_SPEED before sim time follows the wall clock"`
	SimAnchor string        `env:"VIGIL_SIM_ANCHOR" help:"sim: RFC 3339 instant where sim time equals wall time with clock ahead (default: UTC midnight of the start day), where the replay starts with clock wall (default: the start); pin it when instances start at different times"`
	SimTick   time.Duration `env:"VIGIL_SIM_TICK" envDefault:"50ms" help:"sim: wall time between two emissions"`

	ReplayFile   string  `env:"VIGIL_REPLAY_FILE" help:"replay: CSV of 1h bars (start,open,high,low,close,volume)"`
	ReplaySpeed  float64 `env:"VIGIL_REPLAY_SPEED" envDefault:"0" help:"replay: bars per second, 0 = as fast as possible"`
	ReplaySymbol string  `env:"VIGIL_REPLAY_SYMBOL" envDefault:"BTC-USD" help:"replay: the product the file's bars belong to"`

	CoinbaseWSURL          string        `env:"VIGIL_COINBASE_WS_URL" envDefault:"wss://advanced-trade-ws.coinbase.com" help:"coinbase: market data WebSocket"`
	CoinbaseRESTURL        string        `env:"VIGIL_COINBASE_REST_URL" envDefault:"https://api.coinbase.com" help:"coinbase: REST origin"`
	CoinbaseKeyName        string        `env:"VIGIL_COINBASE_KEY_NAME" help:"coinbase: CDP key name organizations/{org}/apiKeys/{id} (with KEY_FILE: private endpoint and signed messages)"`
	CoinbaseKeyFile        string        `env:"VIGIL_COINBASE_KEY_FILE" secret:"true" help:"coinbase: file holding the CDP key's EC private key (PEM)"`
	CoinbasePublicRPS      float64       `env:"VIGIL_COINBASE_PUBLIC_RPS" envDefault:"10" help:"coinbase: REST requests per second without a key (per IP)"`
	CoinbasePrivateRPS     float64       `env:"VIGIL_COINBASE_PRIVATE_RPS" envDefault:"30" help:"coinbase: REST requests per second with a key"`
	CoinbaseSilenceTimeout time.Duration `env:"VIGIL_COINBASE_SILENCE_TIMEOUT" envDefault:"10s" help:"coinbase: reconnect after this long without any frame"`
	CoinbaseReconcileDelay time.Duration `env:"VIGIL_COINBASE_RECONCILE_DELAY" envDefault:"5s" help:"coinbase: wait after a bar closes before reading it back from REST"`
}

// Validate checks every part of the configuration.
func (c Config) Validate() error {
	if err := config.ValidateAll(c.NATS, c.Service, c.Redis); err != nil {
		return err
	}
	positive := []struct {
		name string
		ok   bool
	}{
		{"VIGIL_FEED_CANDLE_RETENTION", c.Retention > 0},
		{"VIGIL_FEED_FLUSH_INTERVAL", c.FlushInterval > 0},
		{"VIGIL_FEED_QUIET_INTERVAL", c.QuietInterval > 0},
		{"VIGIL_FEED_GAP_FILL_BARS", c.GapFillBars > 0},
		{"VIGIL_FEED_BOOK_DEPTH", c.BookDepth > 0 && c.BookDepth <= contract.MaxBookLevels},
		{"VIGIL_FEED_BOOK_INTERVAL", c.BookInterval > 0},
		{"VIGIL_FEED_BACKFILL_TIMEOUT", c.BackfillMax > 0},
	}
	for _, p := range positive {
		if !p.ok {
			return fmt.Errorf("%s: must be positive (book depth at most %d)", p.name, contract.MaxBookLevels)
		}
	}
	switch c.Source {
	case "sim":
		if c.SimSpeed < 1 || c.SimSpeed > sim.MaxSpeed {
			return fmt.Errorf("VIGIL_SIM_SPEED: %v must be between 1 and %d", c.SimSpeed, sim.MaxSpeed)
		}
		if c.SimClock != sim.ClockAhead && c.SimClock != sim.ClockWall {
			return fmt.Errorf("VIGIL_SIM_CLOCK: %q must be %s or %s", c.SimClock, sim.ClockAhead, sim.ClockWall)
		}
		if c.SimClock == sim.ClockWall && (c.SimReplay <= 0 || c.SimSpeed == 1) {
			return fmt.Errorf("VIGIL_SIM_REPLAY: %v must be positive, and VIGIL_SIM_SPEED (%v) above 1, with VIGIL_SIM_CLOCK=wall", c.SimReplay, c.SimSpeed)
		}
		if c.SimAnchor != "" {
			if _, err := time.Parse(time.RFC3339, c.SimAnchor); err != nil {
				return fmt.Errorf("VIGIL_SIM_ANCHOR: %q is not an RFC 3339 time", c.SimAnchor)
			}
		}
		if c.SimTick <= 0 {
			return errors.New("VIGIL_SIM_TICK: must be positive")
		}
	case "replay":
		if c.ReplayFile == "" {
			return errors.New("VIGIL_REPLAY_FILE: is required with VIGIL_FEED_SOURCE=replay")
		}
		if _, err := os.Stat(c.ReplayFile); err != nil {
			return fmt.Errorf("VIGIL_REPLAY_FILE: %w", err)
		}
		if c.ReplaySpeed < 0 {
			return fmt.Errorf("VIGIL_REPLAY_SPEED: %v is negative", c.ReplaySpeed)
		}
		if err := contract.ValidateSymbol(c.ReplaySymbol); err != nil {
			return fmt.Errorf("VIGIL_REPLAY_SYMBOL: %w", err)
		}
	case "coinbase":
		if err := config.CheckURL("VIGIL_COINBASE_WS_URL", c.CoinbaseWSURL, "ws", "wss"); err != nil {
			return err
		}
		if err := config.CheckURL("VIGIL_COINBASE_REST_URL", c.CoinbaseRESTURL, "http", "https"); err != nil {
			return err
		}
		if (c.CoinbaseKeyName == "") != (c.CoinbaseKeyFile == "") {
			return errors.New("VIGIL_COINBASE_KEY_NAME and VIGIL_COINBASE_KEY_FILE: set both or neither")
		}
		if c.CoinbaseKeyFile != "" {
			if _, err := os.Stat(c.CoinbaseKeyFile); err != nil {
				return errors.New("VIGIL_COINBASE_KEY_FILE: the file cannot be read") // its path is a secret too
			}
		}
		if c.CoinbasePublicRPS <= 0 || c.CoinbasePrivateRPS <= 0 {
			return errors.New("VIGIL_COINBASE_PUBLIC_RPS and VIGIL_COINBASE_PRIVATE_RPS: must be positive")
		}
		if c.CoinbaseSilenceTimeout <= 0 || c.CoinbaseReconcileDelay <= 0 {
			return errors.New("VIGIL_COINBASE_SILENCE_TIMEOUT and VIGIL_COINBASE_RECONCILE_DELAY: must be positive")
		}
	default:
		return fmt.Errorf("VIGIL_FEED_SOURCE: %q is not one of sim, coinbase, replay", c.Source)
	}
	return nil
}

// Run runs vigil-feed until ctx ends: it loads the configuration from the
// environment (-h in args lists it) and serves.
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	var cfg Config
	if err := config.Load(&cfg, contract.ServiceFeed, "turns exchange market data into versioned candles", args, stdout); err != nil {
		return err
	}
	return Serve(ctx, cfg, stdout)
}

// Serve runs one vigil-feed instance with cfg until ctx ends, then shuts
// down (pkg/service): the state watch stops, running gap fills and
// backfills are cancelled, the engine's last flush goes out, and only then
// the instance leaves the group, so that the next owner's gap fill starts
// after this instance's last write.
func Serve(ctx context.Context, cfg Config, stdout io.Writer) error {
	rt, err := service.Boot(ctx, contract.ServiceFeed, cfg.Service, cfg.NATS, &cfg, stdout)
	if err != nil {
		return err
	}
	return rt.Serve(ctx, func(ctx context.Context) error { return start(ctx, cfg, rt) })
}

// start opens Redis, builds the engine and starts the instance's parts.
func start(ctx context.Context, cfg Config, rt *service.Runtime) error {
	rdb, err := rt.OpenRedis(ctx, cfg.Redis)
	if err != nil {
		return err
	}
	metrics, err := candles.NewMetrics()
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	writer := candlewriter.New(redisstore.New(rdb, cfg.Retention), rt.JS, rt.Log, metrics)
	eng, err := candles.New(candles.Config{
		Writer: writer, NC: rt.NC, Log: rt.Log, Metrics: metrics, FlushInterval: cfg.FlushInterval,
		BookInterval: cfg.BookInterval, BookDepth: cfg.BookDepth, GapFillBars: cfg.GapFillBars,
		StopTimeout: cfg.ShutdownTimeout, QuietInterval: cfg.QuietInterval,
	}, func(sink source.Sink) (source.Source, error) { return newSource(cfg, sink, rt) })
	if err != nil {
		return err
	}
	if cb, ok := eng.Source().(*coinbase.Source); ok {
		if err := metrics.Observe("vigil.feed.coinbase", "Coinbase stream frames and REST requests (rest_requests, rest_429, malformed, ...)", cb.Counters); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	f := newFeed(cfg, rt.Log, rt.JS, writer, eng, metrics)
	started := time.Now()
	svc, err := rt.Start(service.Config{Svc: contract.SvcFeed, Description: "vigil feed: market data to versioned candles", Verbs: verbs},
		func(context.Context, string) any { return f.status(started) })
	if err != nil {
		return err
	}
	group, err := membership.Join(ctx, rt.JS, MembershipGroup, svc.ID(), membership.Options{Log: rt.Log})
	if err != nil {
		return err
	}
	svc.OnShutdown(group.Leave)
	f.mu.Lock()
	f.group = group // status, served since Start, reads it under f.mu
	f.mu.Unlock()
	if err := f.register(svc); err != nil {
		return err
	}
	// The engine's last flush (whatever it holds, cut off at
	// VIGIL_SHUTDOWN_TIMEOUT) comes before leaving the group.
	svc.Go(eng.Run)
	svc.OnShutdown(func(context.Context) error { f.cancelJobs(); return nil })
	if err := svc.FollowStates(ctx, rt.JS, f.onState); err != nil {
		return err
	}
	svc.Go(func(ctx context.Context) error { f.reconverge(ctx); return nil })
	return nil
}

// newSource builds the configured source.
func newSource(cfg Config, sink source.Sink, rt *service.Runtime) (source.Source, error) {
	switch cfg.Source {
	case "replay":
		return replay.New(replay.Config{File: cfg.ReplayFile, Speed: cfg.ReplaySpeed, Symbol: cfg.ReplaySymbol}, sink)
	case "coinbase":
		cbCfg := coinbase.Config{
			WebSocketURL: cfg.CoinbaseWSURL, RESTURL: cfg.CoinbaseRESTURL, RequestsPerSecond: cfg.CoinbasePublicRPS,
			SilenceTimeout: cfg.CoinbaseSilenceTimeout, ReconcileDelay: cfg.CoinbaseReconcileDelay, Log: rt.Log,
		}
		if cfg.CoinbaseKeyName != "" {
			pem, err := os.ReadFile(cfg.CoinbaseKeyFile)
			if err != nil {
				return nil, fmt.Errorf("VIGIL_COINBASE_KEY_FILE: %w", err)
			}
			creds, err := coinbase.NewCredentials(cfg.CoinbaseKeyName, pem)
			if err != nil {
				return nil, fmt.Errorf("VIGIL_COINBASE_KEY_FILE: %w", err)
			}
			cbCfg.Credentials, cbCfg.RequestsPerSecond = creds, cfg.CoinbasePrivateRPS
		}
		return coinbase.New(cbCfg, sink)
	default:
		var anchor time.Time
		if cfg.SimAnchor != "" {
			anchor, _ = time.Parse(time.RFC3339, strings.TrimSpace(cfg.SimAnchor)) // validated in Config.Validate
		}
		return sim.New(sim.Config{Seed: cfg.SimSeed, Clock: cfg.SimClock, Speed: cfg.SimSpeed, Replay: cfg.SimReplay, Anchor: anchor, Tick: cfg.SimTick}, sink)
	}
}
