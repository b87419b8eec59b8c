package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"vigil.dev/pkg/localstack"
)

// observeScrapeInterval is how often the dev stack's Prometheus scrapes.
const observeScrapeInterval = 5 * time.Second

// Jaeger's addresses with TRACING=1: OTLP in, the query API (traces and
// the span metrics the Monitor tab shows) and its span metrics for
// Prometheus to scrape (job jaeger-spanmetrics).
const (
	jaegerOTLPHTTPAddr    = "127.0.0.1:4318"
	jaegerOTLPGRPCAddr    = "127.0.0.1:4317"
	jaegerQueryHTTPAddr   = "127.0.0.1:16686"
	jaegerQueryGRPCAddr   = "127.0.0.1:16685"
	jaegerSpanMetricsAddr = "127.0.0.1:8889"
	// jaegerSpanMetricsJob is the span metrics' scrape job.
	jaegerSpanMetricsJob = "jaeger-spanmetrics"
)

// validateObserve checks the ports of OBSERVE=1: Prometheus's, and the
// services' from MetricsPort on.
func (c devConfig) validateObserve() error {
	if c.PrometheusPort < 1 || c.PrometheusPort > 65535 {
		return fmt.Errorf("VIGIL_DEV_PROMETHEUS_PORT: %d is not a port (1..65535)", c.PrometheusPort)
	}
	if c.MetricsPort < 1 || c.MetricsPort+len(services)-1 > 65535 {
		return fmt.Errorf("VIGIL_DEV_METRICS_PORT: %d is not a port (1..%d) for %d services", c.MetricsPort, 65535-len(services)+1, len(services))
	}
	return nil
}

// healthAddrs gives each service, with OBSERVE=1, a health endpoint with
// its metrics (/livez, /readyz, /metrics) on 127.0.0.1, from
// VIGIL_DEV_METRICS_PORT on in the order of services; nil without.
func healthAddrs(cfg devConfig, binaries []builtService) map[string]string {
	if !cfg.Observe {
		return nil
	}
	addrs := make(map[string]string, len(binaries))
	for i, b := range binaries {
		addrs[b.name] = net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.MetricsPort+i))
	}
	return addrs
}

// withHealthAddr is env with VIGIL_HEALTH_ADDR=addr (env itself when
// addr is empty).
func withHealthAddr(env []string, addr string) []string {
	if addr == "" {
		return env
	}
	return append(slices.Clip(env), "VIGIL_HEALTH_ADDR="+addr)
}

// startPrometheus runs Prometheus (OBSERVE=1) scraping every service's
// /metrics at addrs, with deploy/prometheus/alerts.yml, until ctx ends,
// and returns the banner's lines about it.
func startPrometheus(ctx context.Context, wg *sync.WaitGroup, cfg devConfig, root, runDir string, binaries []builtService, addrs map[string]string, log *slog.Logger) ([]string, error) {
	if !cfg.Observe {
		return nil, nil
	}
	jobs := make([]localstack.ScrapeJob, 0, len(binaries)+1)
	for _, b := range binaries {
		jobs = append(jobs, localstack.ScrapeJob{Name: b.binary, Targets: []string{addrs[b.name]}})
	}
	if cfg.Tracing {
		jobs = append(jobs, localstack.ScrapeJob{Name: jaegerSpanMetricsJob, Targets: []string{jaegerSpanMetricsAddr}})
	}
	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	prom, err := localstack.StartPrometheus(startCtx, localstack.Options{Dir: filepath.Join(runDir, "prometheus"), Port: cfg.PrometheusPort},
		localstack.PrometheusConfig{Jobs: jobs, ScrapeInterval: observeScrapeInterval,
			RuleFiles: []string{filepath.Join(root, "deploy", "prometheus", "alerts.yml")}})
	if err != nil {
		return nil, err
	}
	wg.Go(func() {
		<-ctx.Done()
		stopServer(log, "prometheus", prom.Stop)
	})
	log.Info("prometheus up", "url", prom.URL(), "log", prom.LogPath())
	lines := []string{
		fmt.Sprintf("metrics   Prometheus %s (graphs: %s/graph, alerts: %s/alerts), log %s", prom.URL(), prom.URL(), prom.URL(), prom.LogPath()),
		"          dashboard for Grafana: deploy/grafana/vigil.json; rules: deploy/prometheus/alerts.yml",
	}
	for _, b := range binaries {
		lines = append(lines, fmt.Sprintf("          %-16s http://%s/metrics  /readyz", b.binary, addrs[b.name]))
	}
	return lines, nil
}

// startJaeger runs Jaeger (TRACING=1), built once by
// deploy/scripts/jaeger.sh, with runDir/jaeger.yaml: traces in memory, and
// span metrics (calls, errors, latency per service and span name) from
// the spanmetrics connector, scraped by the dev stack's Prometheus and read
// back from it by Jaeger's metrics API, the Monitor tab's. It returns the
// banner's lines about it.
func startJaeger(ctx context.Context, wg *sync.WaitGroup, cfg devConfig, root, runDir string, logs *console, log *slog.Logger) ([]string, error) {
	bin, err := jaegerBinary(ctx, root)
	if err != nil {
		return nil, err
	}
	yaml, err := localstack.JaegerConfig{
		OTLPHTTPAddr: jaegerOTLPHTTPAddr, OTLPGRPCAddr: jaegerOTLPGRPCAddr,
		QueryHTTPAddr: jaegerQueryHTTPAddr, QueryGRPCAddr: jaegerQueryGRPCAddr,
		MaxTraces:       100000,
		SpanMetricsAddr: jaegerSpanMetricsAddr,
		PrometheusURL:   "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.PrometheusPort)),
	}.YAML()
	if err != nil {
		return nil, err
	}
	configPath := filepath.Join(runDir, "jaeger.yaml")
	if err := os.WriteFile(configPath, []byte(yaml), 0o644); err != nil {
		return nil, fmt.Errorf("devstack: %w", err)
	}
	wg.Go(func() {
		supervise(ctx, child{name: "jaeger", path: bin, args: []string{"--config", configPath}, env: os.Environ(),
			lines: logs.discard("jaeger"), grace: cfg.StopGrace, log: log})
	})
	query := "http://" + jaegerQueryHTTPAddr
	return []string{
		fmt.Sprintf("tracing   Jaeger %s (OTLP http://%s), config %s, log %s", query, jaegerOTLPHTTPAddr, configPath, logs.logPath("jaeger")),
		fmt.Sprintf("          traces: %s/api/traces?service=vigil-control&limit=5", query),
		fmt.Sprintf("          Monitor data (span metrics via Prometheus): %s/api/metrics/calls?service=vigil-control", query),
		"          (Jaeger built from the Go module has no UI pages: its web page is a placeholder)",
	}, nil
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
