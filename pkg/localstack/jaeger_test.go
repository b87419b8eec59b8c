package localstack_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/localstack"
)

// TestJaegerConfigNamesTheBadField: a config with a wrong field is refused
// naming it; a good one renders the pipelines it asks for (span metrics
// only with SpanMetricsAddr, pointed at the Prometheus given). Jaeger
// itself runs this YAML in e2e/tracing.
func TestJaegerConfigNamesTheBadField(t *testing.T) {
	good := localstack.JaegerConfig{OTLPHTTPAddr: "127.0.0.1:4318", QueryHTTPAddr: "127.0.0.1:16686", QueryGRPCAddr: "127.0.0.1:16685"}
	for field, c := range map[string]localstack.JaegerConfig{
		"OTLPHTTPAddr":     {QueryHTTPAddr: good.QueryHTTPAddr, QueryGRPCAddr: good.QueryGRPCAddr},
		"QueryHTTPAddr":    {OTLPHTTPAddr: good.OTLPHTTPAddr, QueryHTTPAddr: "16686", QueryGRPCAddr: good.QueryGRPCAddr},
		"OTLPGRPCAddr":     {OTLPHTTPAddr: good.OTLPHTTPAddr, OTLPGRPCAddr: "x", QueryHTTPAddr: good.QueryHTTPAddr, QueryGRPCAddr: good.QueryGRPCAddr},
		"PrometheusURL":    {OTLPHTTPAddr: good.OTLPHTTPAddr, QueryHTTPAddr: good.QueryHTTPAddr, QueryGRPCAddr: good.QueryGRPCAddr, SpanMetricsAddr: "127.0.0.1:8889"},
		"SpanMetricsFlush": {OTLPHTTPAddr: good.OTLPHTTPAddr, QueryHTTPAddr: good.QueryHTTPAddr, QueryGRPCAddr: good.QueryGRPCAddr, SpanMetricsFlush: -time.Second},
	} {
		_, err := c.YAML()
		if !errors.Is(err, localstack.ErrInvalidOptions) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s wrong: err %v, want localstack.ErrInvalidOptions naming it", field, err)
		}
	}
	plain, err := good.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(plain, "spanmetrics") {
		t.Errorf("span metrics without SpanMetricsAddr:\n%s", plain)
	}
	spm := good
	spm.SpanMetricsAddr, spm.PrometheusURL = "127.0.0.1:8889", "http://127.0.0.1:9090"
	yaml, err := spm.YAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"exporters: [jaeger_storage_exporter, spanmetrics]", "receivers: [spanmetrics]",
		`endpoint: "http://127.0.0.1:9090"`, "metrics: spanmetrics", `endpoint: "127.0.0.1:8889"`, "metrics_flush_interval: 5s"} {
		if !strings.Contains(yaml, want) {
			t.Errorf("YAML without %q:\n%s", want, yaml)
		}
	}
}
