package localstack

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ScrapeJob is one job of a Prometheus configuration: the targets
// (host:port) whose /metrics Prometheus scrapes, labelled job=Name.
type ScrapeJob struct {
	Name    string
	Targets []string
}

// PrometheusConfig is what StartPrometheus writes into prometheus.yml.
type PrometheusConfig struct {
	// Jobs are scraped every ScrapeInterval (default 5 s).
	Jobs           []ScrapeJob
	ScrapeInterval time.Duration
	// RuleFiles are alerting and recording rule files (absolute paths),
	// evaluated every ScrapeInterval.
	RuleFiles []string
	// Retention bounds the stored samples (default 2 days).
	Retention time.Duration
}

// Prometheus is a private Prometheus server started by StartPrometheus.
type Prometheus struct {
	proc *process
	port int
}

// StartPrometheus writes opts.Dir/prometheus.yml from cfg and runs the
// prometheus binary (Debian package prometheus) on 127.0.0.1 with its
// samples in opts.Dir/data, and waits until /-/ready answers 200.
func StartPrometheus(ctx context.Context, opts Options, cfg PrometheusConfig) (*Prometheus, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		return nil, fmt.Errorf("%w: prometheus is not on PATH: run `make deps OBSERVE=1` (deploy/scripts/deps.sh), or apt-get install -y prometheus", ErrMissingBinary)
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("%w: Dir %q: %w", ErrInvalidOptions, opts.Dir, err)
	}
	if err := ensureDir(dir, 0o755); err != nil {
		return nil, err
	}
	configPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(configPath, []byte(cfg.yaml()), 0o644); err != nil {
		return nil, fmt.Errorf("localstack: %w", err)
	}
	ctx, cancel := withStartDeadline(ctx)
	defer cancel()
	return startOnPort(opts, func(port int) (*Prometheus, error) {
		return startPrometheusOn(ctx, bin, dir, configPath, port, cfg)
	})
}

func startPrometheusOn(ctx context.Context, bin, dir, configPath string, port int, cfg PrometheusConfig) (*Prometheus, error) {
	retention := cfg.Retention
	if retention <= 0 {
		retention = 48 * time.Hour
	}
	cmd := exec.Command(bin,
		"--config.file="+configPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--storage.tsdb.retention.time="+strconv.Itoa(int(retention.Seconds()))+"s",
		"--web.listen-address="+net.JoinHostPort(loopback, strconv.Itoa(port)),
	)
	cmd.Dir = dir
	proc, err := startProcess("prometheus", cmd, filepath.Join(dir, "prometheus.log"), syscall.SIGTERM, nil)
	if err != nil {
		return nil, err
	}
	p := &Prometheus{proc: proc, port: port}
	client := &http.Client{Timeout: time.Second}
	err = proc.waitReady(ctx, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+"/-/ready", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/-/ready: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		_ = proc.stop(syscall.SIGKILL)
		return nil, classifyExit(err, proc.logTail())
	}
	return p, nil
}

// yaml is the prometheus.yml of cfg.
func (cfg PrometheusConfig) yaml() string {
	interval := cfg.ScrapeInterval
	if interval <= 0 {
		interval = 5 * time.Second
	}
	var b strings.Builder
	b.WriteString("# Written by vigil (pkg/localstack): the dev stack's or a test's Prometheus.\n")
	fmt.Fprintf(&b, "global:\n  scrape_interval: %s\n  evaluation_interval: %s\n", interval, interval)
	if len(cfg.RuleFiles) > 0 {
		b.WriteString("rule_files:\n")
		for _, f := range cfg.RuleFiles {
			fmt.Fprintf(&b, "  - %q\n", f)
		}
	}
	b.WriteString("scrape_configs:\n")
	for _, j := range cfg.Jobs {
		fmt.Fprintf(&b, "  - job_name: %q\n    static_configs:\n      - targets: [", j.Name)
		for i, t := range j.Targets {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q", t)
		}
		b.WriteString("]\n")
	}
	return b.String()
}

// URL is the server's base URL, http://127.0.0.1:<port>.
func (p *Prometheus) URL() string {
	return "http://" + net.JoinHostPort(loopback, strconv.Itoa(p.port))
}

// LogPath is the file the server writes its log to.
func (p *Prometheus) LogPath() string { return p.proc.logPath }

// Stop shuts the server down with SIGTERM and waits for it to exit.
func (p *Prometheus) Stop() error { return p.proc.stop(syscall.SIGTERM) }
