package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/binaries"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/telemetry"
)

// devConfig is the dev stack's configuration, from the environment.
type devConfig struct {
	NATSPort     int           `env:"VIGIL_DEV_NATS_PORT" envDefault:"4222" help:"port of the embedded NATS server"`
	RedisPort    int           `env:"VIGIL_DEV_REDIS_PORT" envDefault:"6380" help:"port of the private redis-server"`
	PostgresPort int           `env:"VIGIL_DEV_POSTGRES_PORT" envDefault:"5433" help:"port of the private PostgreSQL"`
	FeedSource   string        `env:"VIGIL_FEED_SOURCE" envDefault:"sim" help:"market data source passed to vigil-feed (sim, coinbase, replay)"`
	StopGrace    time.Duration `env:"VIGIL_DEV_STOP_GRACE" envDefault:"15s" help:"how long a service may take to stop after SIGTERM before it is killed"`
	Tracing      bool          `env:"TRACING" envDefault:"false" help:"1 also runs Jaeger (OTLP on 4317/4318, query API on 16686, span metrics on 8889 for Prometheus) and points the services at it; implies OBSERVE=1"`
	Dir          string        `env:"VIGIL_DEV_DIR" help:"the dev stack's state and logs (default .run at the repository root)"`
	BinDir       string        `env:"VIGIL_DEV_BIN" help:"where the service binaries are built (default bin at the repository root)"`
	Auth         bool          `env:"AUTH" envDefault:"true" help:"NATS with accounts and users (credentials generated into <dir>/auth, nats CLI contexts vigil (admin, selected) and demo (tenant)); 0 runs NATS open, without auth"`
	TLS          bool          `env:"TLS" envDefault:"false" help:"1 runs NATS (tls://), Redis (rediss://, TLS port only) and PostgreSQL (sslmode=verify-full) with TLS only, certificates generated into <dir>/tls (a CA, server and client certificates), services and nats contexts verifying them"`
	ReadyTimeout time.Duration `env:"VIGIL_DEV_READY_TIMEOUT" envDefault:"2m" help:"how long to wait for every service to register before printing the banner anyway"`

	// Observe (OBSERVE=1, or TRACING=1) runs Prometheus (PrometheusPort)
	// and gives the services health endpoints with /metrics (MetricsPort on).
	Observe        bool `env:"OBSERVE" envDefault:"false" help:"1 also runs Prometheus scraping every service's /metrics (TRACING=1 implies it)"`
	PrometheusPort int  `env:"VIGIL_DEV_PROMETHEUS_PORT" envDefault:"9090" help:"port of Prometheus (OBSERVE=1)"`
	MetricsPort    int  `env:"VIGIL_DEV_METRICS_PORT" envDefault:"9464" help:"health and metrics port of the first service (OBSERVE=1); the others take the next ones"`
}

// Validate checks the ports and the grace period.
func (c devConfig) Validate() error {
	for name, port := range map[string]int{
		"VIGIL_DEV_NATS_PORT":     c.NATSPort,
		"VIGIL_DEV_REDIS_PORT":    c.RedisPort,
		"VIGIL_DEV_POSTGRES_PORT": c.PostgresPort,
	} {
		if port < 1 || port > 65535 {
			return fmt.Errorf("%s: %d is not a port (1..65535)", name, port)
		}
	}
	if err := c.validateObserve(); err != nil {
		return err
	}
	if c.StopGrace <= 0 {
		return fmt.Errorf("VIGIL_DEV_STOP_GRACE: %v is not positive", c.StopGrace)
	}
	if c.ReadyTimeout <= 0 {
		return fmt.Errorf("VIGIL_DEV_READY_TIMEOUT: %v is not positive", c.ReadyTimeout)
	}
	return nil
}

// services are the service binaries the dev stack builds and runs (with
// vigilctl, built but not run); a service's Short name is its output
// prefix and its log file's name, its Name also its micro service name.
var services = binaries.Services

// Demo user seeded into the database.
const (
	demoProvider     = "dev"
	demoToken        = "demo"
	demoExchange     = "coinbase"
	demoSettingsFile = "deploy/dev/demo-settings.json"
)

// startTimeout bounds the start of each server.
const startTimeout = 2 * time.Minute

// simClock is the simulator clock of the dev stack (see the feed's
// VIGIL_SIM_CLOCK): replay the recent past fast, then follow the wall clock,
// so that no bar is ever dated in the future.
const simClock = "wall"

func run(ctx context.Context, log *slog.Logger, args []string) error {
	began := time.Now()
	var cfg devConfig
	if err := config.Load(&cfg, "devstack", "Runs the vigil dev stack (make run).", args, os.Stdout); err != nil {
		return err
	}
	cfg.Observe = cfg.Observe || cfg.Tracing
	root, err := localstack.RepoRoot()
	if err != nil {
		return err
	}
	runDir := cmp.Or(cfg.Dir, filepath.Join(root, ".run"))
	binDir := cmp.Or(cfg.BinDir, filepath.Join(root, "bin"))
	if err := resetOldSimState(log, runDir); err != nil {
		return err
	}
	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	var certs *localstack.DevTLS
	var serverTLS *localstack.TLSFiles
	if cfg.TLS {
		if certs, err = devTLS(filepath.Join(runDir, "tls")); err != nil {
			return err
		}
		serverTLS = &certs.Server
		log.Info("TLS on", "certificates", certs.Dir)
	}
	redisSrv, err := localstack.StartRedis(startCtx, localstack.Options{
		Dir: filepath.Join(runDir, "redis"), Port: cfg.RedisPort, Persist: true, TLS: serverTLS,
	})
	if err != nil {
		return err
	}
	defer stopServer(log, "redis", redisSrv.Stop)
	log.Info("redis up", "url", redisSrv.URL(), "log", redisSrv.LogPath())

	pg, err := localstack.StartPostgres(startCtx, localstack.Options{
		Dir: filepath.Join(runDir, "pg"), Port: cfg.PostgresPort, Persist: true, TLS: serverTLS,
	})
	if err != nil {
		return err
	}
	defer stopServer(log, "postgres", pg.Stop)
	log.Info("postgres up", "url", pg.URL(), "log", pg.LogPath())

	natsOpts := localstack.Options{Dir: filepath.Join(runDir, "nats"), Port: cfg.NATSPort, TLS: serverTLS}
	var auth *devAuth
	if cfg.Auth {
		if auth, err = prepareAuth(root, runDir); err != nil {
			return err
		}
		natsOpts.NATSConfig = auth.configPath()
	}
	natsSrv, err := localstack.StartNATS(startCtx, natsOpts)
	if err != nil {
		return err
	}
	defer stopServer(log, "nats", natsSrv.Stop)
	log.Info("nats up", "url", natsSrv.URL(), "auth", cfg.Auth)
	adminURL := natsSrv.URL()
	if auth != nil {
		adminURL = auth.url(natsSrv.URL(), adminUser)
		if err := selectContexts(auth, natsSrv.URL(), certs); err != nil {
			return err
		}
		log.Info("nats CLI contexts written", "selected", adminContext, "tenant", demoContext, "credentials", auth.dir)
	}

	userID, exchangeID, err := prepareDatabase(startCtx, pg.URL(), filepath.Join(root, demoSettingsFile))
	if err != nil {
		return err
	}
	log.Info("database migrated, demo user seeded", "token", demoToken, "user_id", userID, "exchange_id", exchangeID)

	binaries, err := buildServices(ctx, log, root, binDir)
	if err != nil {
		return err
	}

	out := &syncWriter{out: os.Stdout}
	var pretty slog.Handler
	if telemetry.IsTerminal(os.Stdout) {
		pretty = telemetry.NewConsoleHandler(out, slog.LevelInfo, telemetry.ColorOK(os.Stdout))
	}
	logs, err := newConsole(filepath.Join(runDir, "logs"), out, pretty)
	if err != nil {
		return err
	}
	defer logs.Close()

	env := serviceEnv(os.Environ(), natsSrv.URL(), redisSrv.URL(), pg.URL(), cfg.FeedSource, time.Now())
	if certs != nil {
		env = append(env, tlsEnv(certs)...)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	extra, env, err := startOptional(ctx, &wg, cfg, root, runDir, env, logs, log)
	if err != nil {
		return err
	}
	addrs := healthAddrs(cfg, binaries)
	for _, b := range binaries {
		env := env
		if auth != nil {
			// Each service on its own least-privilege user, as in deploy/.
			env = append(slices.Clip(env), "NATS_URL="+auth.url(natsSrv.URL(), b.binary))
		}
		wg.Go(func() {
			supervise(ctx, child{name: b.name, path: b.path, env: withHealthAddr(env, addrs[b.name]), lines: logs.lines(b.name), grace: cfg.StopGrace, log: log})
		})
	}
	observed, err := startPrometheus(ctx, &wg, cfg, root, runDir, binaries, addrs, log)
	if err != nil {
		return err
	}
	extra = append(extra, observed...)
	waitForServices(ctx, log, adminURL, certs, binaries, cfg.ReadyTimeout)
	printBanner(out, banner{
		took: time.Since(began), natsURL: natsSrv.URL(), redisURL: redisSrv.URL(), postgresURL: pg.URL(), auth: auth, tls: certs,
		runDir: runDir, binaries: binaries, logs: logs, feedSource: cfg.FeedSource, env: env, extra: extra,
	})

	<-ctx.Done()
	log.Info("stopping the dev stack")
	return nil
}

// selectContexts writes the nats CLI contexts of auth for natsURL (with
// the CA and client certificate of certs, when TLS is on) into the nats
// CLI's configuration directory and selects the admin's.
func selectContexts(auth *devAuth, natsURL string, certs *localstack.DevTLS) error {
	dir, err := natsConfigDir(os.Getenv)
	if err != nil {
		return err
	}
	return auth.writeContexts(dir, natsURL, certs)
}

// serviceEnv is the environment of the services: the servers' URLs, the
// feed's source and, for the simulator, its clock (replay from now, then
// the wall clock) unless base sets them.
func serviceEnv(base []string, natsURL, redisURL, postgresURL, feedSource string, start time.Time) []string {
	env := append(slices.Clip(base),
		"NATS_URL="+natsURL,
		"REDIS_URL="+redisURL,
		"DATABASE_URL="+postgresURL,
		"VIGIL_FEED_SOURCE="+feedSource,
	)
	if os.Getenv("VIGIL_SIM_CLOCK") == "" {
		env = append(env, "VIGIL_SIM_CLOCK="+simClock)
		if os.Getenv("VIGIL_SIM_ANCHOR") == "" {
			// One anchor for the whole run: a restarted feed goes on where
			// the clock is instead of replaying again.
			env = append(env, "VIGIL_SIM_ANCHOR="+start.UTC().Format(time.RFC3339))
		}
	}
	return env
}

// startOptional starts what a switch asks for beside the services
// (TRACING=1: Jaeger) and returns the banner's lines about it and the
// services' environment extended to use it.
func startOptional(ctx context.Context, wg *sync.WaitGroup, cfg devConfig, root, runDir string, env []string, logs *console, log *slog.Logger) (banner []string, _ []string, _ error) {
	if cfg.Tracing {
		lines, err := startJaeger(ctx, wg, cfg, root, runDir, logs, log)
		if err != nil {
			return nil, nil, err
		}
		env = append(env, "OTEL_EXPORTER_OTLP_ENDPOINT=http://"+jaegerOTLPHTTPAddr, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
			// Jaeger takes traces only.
			"OTEL_METRICS_EXPORTER=none")
		banner = append(banner, lines...)
	}
	return banner, env, nil
}

// waitForServices waits until every service has registered with NATS (it
// answers $SRV.PING), or timeout passes, so that the banner comes after
// the services' start-up lines.
func waitForServices(ctx context.Context, log *slog.Logger, natsURL string, certs *localstack.DevTLS, binaries []builtService, timeout time.Duration) {
	var opts []nats.Option
	if certs != nil {
		opts = append(opts, nats.RootCAs(certs.CA))
	}
	nc, err := nats.Connect(natsURL, opts...)
	if err != nil {
		log.Warn("cannot check that the services are up", "err", err)
		return
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, b := range binaries {
		for len(localstack.ServiceInstances(nc, b.binary)) == 0 {
			select {
			case <-ctx.Done():
				log.Warn("a service has not registered yet", "process", b.binary, "waited", timeout)
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// resetOldSimState drops the market data of a state directory written by
// the simulator's old clock, which dated its bars up to weeks ahead: with
// those in Redis and NATS, no bar of the wall clock would ever look new.
// PostgreSQL (users, command log, alerts) is kept. The clock used is noted
// in runDir/sim-clock.
func resetOldSimState(log *slog.Logger, runDir string) error {
	marker := filepath.Join(runDir, "sim-clock")
	if b, err := os.ReadFile(marker); err == nil && strings.TrimSpace(string(b)) == simClock {
		return nil
	}
	for _, dir := range []string{"redis", "nats"} {
		path := filepath.Join(runDir, dir)
		if _, err := os.Stat(path); err != nil {
			continue
		}
		log.Info("dropping market data of the old simulator clock (bars dated ahead)", "dir", path)
		if err := os.RemoveAll(path); err != nil {
			return fmt.Errorf("devstack: %w", err)
		}
	}
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return fmt.Errorf("devstack: %w", err)
	}
	return os.WriteFile(marker, []byte(simClock+"\n"), 0o644)
}

// stopServer stops one server at shutdown, logging the outcome.
func stopServer(log *slog.Logger, name string, stop func() error) {
	if err := stop(); err != nil {
		log.Error("stop failed", "server", name, "err", err)
		return
	}
	log.Info("stopped", "server", name)
}

// prepareDatabase migrates the database and seeds the demo user with the
// settings in settingsPath.
func prepareDatabase(ctx context.Context, url, settingsPath string) (userID, exchangeID int64, err error) {
	settings, err := os.ReadFile(settingsPath)
	if err != nil {
		return 0, 0, fmt.Errorf("devstack: demo settings: %w", err)
	}
	pool, err := db.NewPool(ctx, url)
	if err != nil {
		return 0, 0, err
	}
	defer pool.Close()
	if err := db.Migrate(ctx, pool); err != nil {
		return 0, 0, err
	}
	return db.NewUsers(pool).SeedUser(ctx, demoProvider, demoToken, settings, demoExchange)
}

// builtService is a service binary ready to run.
type builtService struct {
	name, binary, path string
}

// buildServices builds the four services and vigilctl into binDir with
// binaries.Build: the staged binaries stay, so that a warm start finds
// them up to date and links nothing.
func buildServices(ctx context.Context, log *slog.Logger, root, binDir string) ([]builtService, error) {
	started := time.Now()
	log.Info("building the services and vigilctl", "into", binDir)
	if err := binaries.Build(ctx, root, binDir, binaries.All(), "-ldflags", "-X vigil.dev/pkg/service.Revision="+gitRevision(ctx, root)); err != nil {
		return nil, err
	}
	var built []builtService
	for _, s := range services {
		built = append(built, builtService{name: s.Short(), binary: s.Name, path: filepath.Join(binDir, s.Name)})
	}
	log.Info("built", "took", time.Since(started).Round(time.Millisecond))
	return built, nil
}

// gitRevision is the short commit of root's checkout, "dev" outside git;
// the binaries report it in their micro service metadata.
func gitRevision(ctx context.Context, root string) string {
	cmd := exec.CommandContext(ctx, "git", "rev-parse", "--short", "HEAD")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "dev"
	}
	return strings.TrimSpace(string(out))
}

// banner is what the dev stack prints once it is up.
type banner struct {
	took                           time.Duration
	natsURL, redisURL, postgresURL string
	runDir                         string
	binaries                       []builtService
	logs                           *console
	feedSource                     string
	env                            []string           // the services' environment
	extra                          []string           // lines of optional parts (TRACING=1)
	auth                           *devAuth           // nil: NATS runs open (AUTH=0)
	tls                            *localstack.DevTLS // nil: no TLS
}

// printBanner tells what runs where, where the logs are, what the market
// clock does and a few commands to try, the demo alert first.
func printBanner(out io.Writer, bn banner) {
	natsFlag := ""
	// With auth, the selected nats context (vigil) names the server and
	// the CA.
	if bn.auth == nil && bn.natsURL != "nats://127.0.0.1:4222" {
		natsFlag = " -s " + bn.natsURL
	}
	if bn.auth == nil && bn.tls != nil {
		natsFlag += " --tlsca " + bn.tls.CA
	}
	vigilctl := filepath.Join(filepath.Dir(bn.binaries[0].path), "vigilctl")
	if rel, err := filepath.Rel(mustGetwd(), vigilctl); err == nil && !strings.HasPrefix(rel, "..") {
		vigilctl = rel
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nvigil dev stack is up in %s (state in %s)\n", bn.took.Round(100*time.Millisecond), bn.runDir)
	fmt.Fprintf(&b, "  NATS      %s  (JetStream store %s)\n", bn.natsURL, filepath.Join(bn.runDir, "nats"))
	if bn.auth != nil {
		fmt.Fprintf(&b, "  auth      on: nats contexts %q (admin, selected) and %q (tenant demo), credentials in %s\n", adminContext, demoContext, bn.auth.dir)
	} else {
		b.WriteString("  auth      off (AUTH=0): anyone may connect and command every user\n")
	}
	if bn.tls != nil {
		fmt.Fprintf(&b, "  TLS       on: NATS, Redis and Postgres take TLS only; CA %s, client certificate %s\n", bn.tls.CA, bn.tls.ClientCert)
	}
	fmt.Fprintf(&b, "  Redis     %s\n", bn.redisURL)
	fmt.Fprintf(&b, "  Postgres  %s\n", bn.postgresURL)
	fmt.Fprintf(&b, "  demo user %q (exchange %s), settings from %s\n", demoToken, demoExchange, demoSettingsFile)
	fmt.Fprintf(&b, "  market    %s\n", marketLine(bn.feedSource, bn.env))
	for _, s := range bn.binaries {
		fmt.Fprintf(&b, "  service   %-16s log %s\n", s.binary, bn.logs.logPath(s.name))
	}
	for _, line := range bn.extra {
		fmt.Fprintf(&b, "  %s\n", line)
	}
	b.WriteString("watch the demo rule's alerts (one a minute):\n")
	fmt.Fprintf(&b, "  nats%s sub 'vigil.alert.%s.>'%s\n", natsFlag, demoToken, natsCLINote())
	fmt.Fprintf(&b, "  %s%s alerts --user %s --follow\n", vigilctl, natsFlag, demoToken)
	b.WriteString("try:\n")
	fmt.Fprintf(&b, "  %s%s top\n", vigilctl, natsFlag)
	fmt.Fprintf(&b, "  nats%s micro ls\n", natsFlag)
	fmt.Fprintf(&b, "  nats%s req vigil.cmd.%s.pause '{}'\n", natsFlag, demoToken)
	if bn.auth != nil {
		fmt.Fprintf(&b, "  nats --context %s req vigil.cmd.%s.resume '{}'   (as the tenant: recorded as %s@DEMO)\n", demoContext, demoToken, demoUser)
	}
	fmt.Fprintf(&b, "  psql '%s'\n", bn.postgresURL)
	if bn.tls != nil {
		fmt.Fprintf(&b, "  redis-cli --tls --cacert %s -u %s\n", bn.tls.CA, bn.redisURL)
	} else {
		fmt.Fprintf(&b, "  redis-cli -u %s\n", bn.redisURL)
	}
	b.WriteString("Ctrl-C stops everything.\n\n")
	_, _ = io.WriteString(out, b.String())
}

// marketLine describes the market data source and, for the simulator, its
// clock, from the services' environment.
func marketLine(source string, env []string) string {
	if source != "sim" {
		return source
	}
	get := func(name, def string) string {
		v := def
		for _, kv := range env {
			if k, val, ok := strings.Cut(kv, "="); ok && k == name {
				v = val
			}
		}
		return v
	}
	speed := get("VIGIL_SIM_SPEED", "60")
	if get("VIGIL_SIM_CLOCK", "ahead") != simClock {
		return fmt.Sprintf("simulator, sim time %sx the wall clock and ahead of it (bars dated in the future)", speed)
	}
	return fmt.Sprintf("simulator replaying the last %s at %sx, then on the wall clock (no bar in the future)", get("VIGIL_SIM_REPLAY", "15m"), speed)
}

// natsCLINote is a remark for the banner when the nats CLI is not on PATH
// yet (make run installs it in the background on a fresh machine).
func natsCLINote() string {
	if _, err := exec.LookPath("nats"); err == nil {
		return ""
	}
	return "   (the nats CLI is still being installed: make deps waits for it)"
}

func mustGetwd() string {
	wd, err := os.Getwd()
	if err != nil {
		return "/"
	}
	return wd
}
