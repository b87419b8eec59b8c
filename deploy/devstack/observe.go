package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"vigil.dev/pkg/localstack"
)

// observeScrapeInterval is how often the dev stack's Prometheus scrapes.
const observeScrapeInterval = 5 * time.Second

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
	jobs := make([]localstack.ScrapeJob, 0, len(binaries))
	for _, b := range binaries {
		jobs = append(jobs, localstack.ScrapeJob{Name: b.binary, Targets: []string{addrs[b.name]}})
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
