package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"vigil.dev/pkg/config"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
)

// Errors of the dev stack.
var (
	// ErrBuild reports a service that does not compile.
	ErrBuild = errors.New("devstack: build failed")
)

// devConfig is the dev stack's configuration, from the environment.
type devConfig struct {
	NATSPort     int           `env:"VIGIL_DEV_NATS_PORT" envDefault:"4222" help:"port of the embedded NATS server"`
	RedisPort    int           `env:"VIGIL_DEV_REDIS_PORT" envDefault:"6380" help:"port of the private redis-server"`
	PostgresPort int           `env:"VIGIL_DEV_POSTGRES_PORT" envDefault:"5433" help:"port of the private PostgreSQL"`
	FeedSource   string        `env:"VIGIL_FEED_SOURCE" envDefault:"sim" help:"market data source passed to vigil-feed (sim, coinbase, replay)"`
	StopGrace    time.Duration `env:"VIGIL_DEV_STOP_GRACE" envDefault:"15s" help:"how long a service may take to stop after SIGTERM before it is killed"`
	Tracing      bool          `env:"TRACING" envDefault:"false" help:"1 also runs Jaeger (OTLP on 4317/4318, UI on 16686) and points the services at it"`
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
	if c.StopGrace <= 0 {
		return fmt.Errorf("VIGIL_DEV_STOP_GRACE: %v is not positive", c.StopGrace)
	}
	return nil
}

// services are the service binaries the dev stack builds and runs: the
// short name (the directory under services/ and the output prefix) and the
// binary name.
var services = []struct{ name, binary string }{
	{"feed", "vigil-feed"},
	{"indicators", "vigil-indicators"},
	{"alerts", "vigil-alerts"},
	{"control", "vigil-control"},
}

// vigilctl is the operator CLI, built but not run.
const vigilctlPackage = "./services/control/cmd/vigilctl"

// Demo user seeded into the database.
const (
	demoProvider     = "dev"
	demoToken        = "demo"
	demoExchange     = "coinbase"
	demoSettingsFile = "deploy/dev/demo-settings.json"
)

// startTimeout bounds the start of each server.
const startTimeout = 2 * time.Minute

func run(ctx context.Context, log *slog.Logger, args []string) error {
	var cfg devConfig
	if err := config.Load(&cfg, "devstack", "Runs the vigil dev stack (make run).", args, os.Stdout); err != nil {
		return err
	}
	root, err := localstack.RepoRoot()
	if err != nil {
		return err
	}
	runDir := filepath.Join(root, ".run")
	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	redisSrv, err := localstack.StartRedis(startCtx, localstack.Options{
		Dir: filepath.Join(runDir, "redis"), Port: cfg.RedisPort, Persist: true,
	})
	if err != nil {
		return err
	}
	defer stopServer(log, "redis", redisSrv.Stop)
	log.Info("redis up", "url", redisSrv.URL(), "log", redisSrv.LogPath())

	pg, err := localstack.StartPostgres(startCtx, localstack.Options{
		Dir: filepath.Join(runDir, "pg"), Port: cfg.PostgresPort, Persist: true,
	})
	if err != nil {
		return err
	}
	defer stopServer(log, "postgres", pg.Stop)
	log.Info("postgres up", "url", pg.URL(), "log", pg.LogPath())

	natsSrv, err := localstack.StartNATS(startCtx, localstack.Options{
		Dir: filepath.Join(runDir, "nats"), Port: cfg.NATSPort,
	})
	if err != nil {
		return err
	}
	defer stopServer(log, "nats", natsSrv.Stop)
	log.Info("nats up", "url", natsSrv.URL())

	userID, exchangeID, err := prepareDatabase(startCtx, pg.URL(), filepath.Join(root, demoSettingsFile))
	if err != nil {
		return err
	}
	log.Info("database migrated, demo user seeded", "token", demoToken, "user_id", userID, "exchange_id", exchangeID)

	binaries, err := buildServices(ctx, log, root)
	if err != nil {
		return err
	}

	env := append(os.Environ(),
		"NATS_URL="+natsSrv.URL(),
		"REDIS_URL="+redisSrv.URL(),
		"DATABASE_URL="+pg.URL(),
		"VIGIL_FEED_SOURCE="+cfg.FeedSource,
	)
	out := &syncWriter{out: os.Stdout}
	var wg sync.WaitGroup
	if cfg.Tracing {
		jaeger, err := jaegerBinary(ctx, root)
		if err != nil {
			return err
		}
		env = append(env, "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
			// Jaeger takes traces only.
			"OTEL_METRICS_EXPORTER=none")
		wg.Go(func() {
			supervise(ctx, child{name: "jaeger", path: jaeger, env: os.Environ(), out: io.Discard, grace: cfg.StopGrace, log: log})
		})
	}
	for _, b := range binaries {
		wg.Go(func() {
			supervise(ctx, child{name: b.name, path: b.path, env: env, out: out, grace: cfg.StopGrace, log: log})
		})
	}
	printBanner(out, natsSrv.URL(), redisSrv.URL(), pg.URL(), runDir, binaries)
	if cfg.Tracing {
		fmt.Fprintf(out, "tracing: Jaeger UI at http://127.0.0.1:16686 (OTLP http://127.0.0.1:4318)\n\n")
	}

	<-ctx.Done()
	log.Info("stopping the dev stack")
	wg.Wait()
	return nil
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

// buildServices builds every service whose main package exists into bin/,
// and vigilctl when present, warning about the missing ones.
func buildServices(ctx context.Context, log *slog.Logger, root string) ([]builtService, error) {
	binDir := filepath.Join(root, "bin")
	var built []builtService
	for _, s := range services {
		pkg := "./services/" + s.name
		if !isMainPackage(ctx, root, pkg) {
			log.Warn("no main package yet; not running it", "service", s.binary, "package", pkg)
			continue
		}
		path := filepath.Join(binDir, s.binary)
		if err := goBuild(ctx, log, root, path, pkg); err != nil {
			return nil, err
		}
		built = append(built, builtService{name: s.name, binary: s.binary, path: path})
	}
	if isMainPackage(ctx, root, vigilctlPackage) {
		if err := goBuild(ctx, log, root, filepath.Join(binDir, "vigilctl"), vigilctlPackage); err != nil {
			return nil, err
		}
	}
	return built, nil
}

// isMainPackage reports whether pkg (relative to root) is a main package.
func isMainPackage(ctx context.Context, root, pkg string) bool {
	cmd := exec.CommandContext(ctx, "go", "list", "-f", "{{.Name}}", pkg)
	cmd.Dir = root
	out, err := cmd.Output()
	return err == nil && strings.TrimSpace(string(out)) == "main"
}

func goBuild(ctx context.Context, log *slog.Logger, root, output, pkg string) error {
	log.Info("building", "package", pkg, "output", output)
	cmd := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X vigil.dev/pkg/service.Revision="+gitRevision(ctx, root), "-o", output, pkg)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: go build %s: %w\n%s", ErrBuild, pkg, err, out)
	}
	return nil
}

// jaegerBinary is the cached Jaeger all-in-one binary, built by
// deploy/scripts/jaeger.sh on first use.
func jaegerBinary(ctx context.Context, root string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "deploy", "scripts", "jaeger.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("devstack: jaeger: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
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

// printBanner tells what runs where and a few commands to try.
func printBanner(out io.Writer, natsURL, redisURL, postgresURL, runDir string, binaries []builtService) {
	natsFlag := ""
	if natsURL != "nats://127.0.0.1:4222" {
		natsFlag = " -s " + natsURL
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nvigil dev stack is up (state in %s)\n", runDir)
	fmt.Fprintf(&b, "  NATS      %s  (JetStream store %s)\n", natsURL, filepath.Join(runDir, "nats"))
	fmt.Fprintf(&b, "  Redis     %s\n", redisURL)
	fmt.Fprintf(&b, "  Postgres  %s\n", postgresURL)
	fmt.Fprintf(&b, "  demo user %q (exchange %s), settings from %s\n", demoToken, demoExchange, demoSettingsFile)
	if len(binaries) == 0 {
		b.WriteString("  services  none built yet\n")
	}
	for _, s := range binaries {
		fmt.Fprintf(&b, "  service   %-16s %s\n", s.binary, s.path)
	}
	b.WriteString("try:\n")
	fmt.Fprintf(&b, "  nats%s micro ls\n", natsFlag)
	fmt.Fprintf(&b, "  nats%s sub 'vigil.result.%s.>'\n", natsFlag, demoToken)
	fmt.Fprintf(&b, "  nats%s req vigil.cmd.%s.pause '{}'\n", natsFlag, demoToken)
	fmt.Fprintf(&b, "  psql '%s'\n", postgresURL)
	fmt.Fprintf(&b, "  redis-cli -u %s\n", redisURL)
	b.WriteString("Ctrl-C stops everything.\n\n")
	_, _ = io.WriteString(out, b.String())
}
