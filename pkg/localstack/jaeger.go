package localstack

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// JaegerConfig is the configuration of a Jaeger v2 all-in-one (the
// OpenTelemetry-collector-based cmd/jaeger that deploy/scripts/jaeger.sh
// builds): traces in memory, OTLP in, the query API out and, with
// SpanMetricsAddr, service performance monitoring (the query API's
// /api/metrics/{latencies,calls,errors}, which Jaeger UI's Monitor tab
// reads): every span also feeds the spanmetrics connector, whose counters
// and latency histograms a Prometheus exporter serves on SpanMetricsAddr
// for PrometheusURL to scrape, and jaeger_query reads them back from
// PrometheusURL.
type JaegerConfig struct {
	// OTLPHTTPAddr is the OTLP/HTTP receiver's host:port (required);
	// OTLPGRPCAddr the OTLP/gRPC one (optional).
	OTLPHTTPAddr string
	OTLPGRPCAddr string
	// QueryHTTPAddr is the query API's (and UI's) host:port (required);
	// QueryGRPCAddr its gRPC API's (required: Jaeger opens one anyway).
	QueryHTTPAddr string
	QueryGRPCAddr string
	// MaxTraces bounds the traces kept in memory (default 10,000).
	MaxTraces int
	// SpanMetricsAddr is the host:port where the span metrics are served
	// for Prometheus at /metrics; empty: no span metrics.
	SpanMetricsAddr string
	// PrometheusURL is the Prometheus that scrapes SpanMetricsAddr and
	// that jaeger_query asks (required with SpanMetricsAddr).
	PrometheusURL string
	// SpanMetricsFlush is how often the connector exports its metrics
	// (default 5 s; the connector's own default is a minute).
	SpanMetricsFlush time.Duration
}

// validate names the first field that is wrong.
func (c JaegerConfig) validate() error {
	addrs := []struct{ name, addr string }{
		{"OTLPHTTPAddr", c.OTLPHTTPAddr}, {"QueryHTTPAddr", c.QueryHTTPAddr}, {"QueryGRPCAddr", c.QueryGRPCAddr},
	}
	if c.OTLPGRPCAddr != "" {
		addrs = append(addrs, struct{ name, addr string }{"OTLPGRPCAddr", c.OTLPGRPCAddr})
	}
	if c.SpanMetricsAddr != "" {
		addrs = append(addrs, struct{ name, addr string }{"SpanMetricsAddr", c.SpanMetricsAddr})
		u, err := url.Parse(c.PrometheusURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%w: PrometheusURL %q is not an http(s) URL (required with SpanMetricsAddr)", ErrInvalidOptions, c.PrometheusURL)
		}
	}
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("%w: %s %q is not host:port: %w", ErrInvalidOptions, a.name, a.addr, err)
		}
	}
	if c.MaxTraces < 0 {
		return fmt.Errorf("%w: MaxTraces %d is negative", ErrInvalidOptions, c.MaxTraces)
	}
	if c.SpanMetricsFlush < 0 {
		return fmt.Errorf("%w: SpanMetricsFlush %v is negative", ErrInvalidOptions, c.SpanMetricsFlush)
	}
	return nil
}

// YAML is the configuration file for `jaeger --config <file>`.
func (c JaegerConfig) YAML() (string, error) {
	if err := c.validate(); err != nil {
		return "", err
	}
	maxTraces := c.MaxTraces
	if maxTraces == 0 {
		maxTraces = 10000
	}
	spm := c.SpanMetricsAddr != ""
	var b strings.Builder
	b.WriteString("# Written by vigil (pkg/localstack.JaegerConfig): Jaeger v2 all-in-one.\n")
	b.WriteString("service:\n  extensions: [jaeger_storage, jaeger_query]\n  pipelines:\n")
	b.WriteString("    traces:\n      receivers: [otlp]\n      processors: [batch]\n")
	if spm {
		b.WriteString("      exporters: [jaeger_storage_exporter, spanmetrics]\n")
		b.WriteString("    metrics/spanmetrics:\n      receivers: [spanmetrics]\n      exporters: [prometheus]\n")
	} else {
		b.WriteString("      exporters: [jaeger_storage_exporter]\n")
	}
	// Jaeger's own telemetry off: its traces would go to localhost:4317.
	b.WriteString("  telemetry:\n    metrics:\n      level: none\n    traces:\n      level: none\n")
	b.WriteString("extensions:\n  jaeger_storage:\n    backends:\n      memstore:\n        memory:\n")
	fmt.Fprintf(&b, "          max_traces: %d\n", maxTraces)
	if spm {
		b.WriteString("    metric_backends:\n      spanmetrics:\n        prometheus:\n")
		fmt.Fprintf(&b, "          endpoint: %q\n          normalize_calls: true\n          normalize_duration: true\n", c.PrometheusURL)
	}
	b.WriteString("  jaeger_query:\n    storage:\n      traces: memstore\n")
	if spm {
		b.WriteString("      metrics: spanmetrics\n")
	}
	fmt.Fprintf(&b, "    http:\n      endpoint: %q\n    grpc:\n      endpoint: %q\n", c.QueryHTTPAddr, c.QueryGRPCAddr)
	b.WriteString("receivers:\n  otlp:\n    protocols:\n")
	fmt.Fprintf(&b, "      http:\n        endpoint: %q\n", c.OTLPHTTPAddr)
	if c.OTLPGRPCAddr != "" {
		fmt.Fprintf(&b, "      grpc:\n        endpoint: %q\n", c.OTLPGRPCAddr)
	}
	b.WriteString("processors:\n  batch:\n    timeout: 100ms\n")
	if spm {
		flush := c.SpanMetricsFlush
		if flush == 0 {
			flush = 5 * time.Second
		}
		fmt.Fprintf(&b, "connectors:\n  spanmetrics:\n    metrics_flush_interval: %s\n", flush)
	}
	b.WriteString("exporters:\n  jaeger_storage_exporter:\n    trace_storage: memstore\n")
	if spm {
		fmt.Fprintf(&b, "  prometheus:\n    endpoint: %q\n", c.SpanMetricsAddr)
	}
	return b.String(), nil
}
