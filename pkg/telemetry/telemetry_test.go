package telemetry_test

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"vigil.dev/pkg/telemetry"
)

// TestPrometheusMetrics records a counter and a histogram through the
// global meter provider that Setup installs for Prometheus (no OTLP
// endpoint) and reads them back from Metrics in the exposition format,
// under the names Prometheus gives them, beside the Go runtime's.
func TestPrometheusMetrics(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, "vigil-test", "0.0.0", "i1", telemetry.Options{Prometheus: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tel.Shutdown(ctx) }()
	if tel.Metrics == nil {
		t.Fatal("Setup with Prometheus: no Metrics handler")
	}
	meter := otel.Meter("vigil.dev/pkg/telemetry/test")
	things, err := meter.Int64Counter("vigil.test.things", metric.WithUnit("{thing}"))
	if err != nil {
		t.Fatal(err)
	}
	took, err := meter.Float64Histogram("vigil.test.duration", metric.WithUnit("s"))
	if err != nil {
		t.Fatal(err)
	}
	things.Add(ctx, 3)
	took.Record(ctx, 0.25)

	rec := httptest.NewRecorder()
	tel.Metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Result().Body)
	text := string(body)
	for _, want := range []string{
		"vigil_test_things_total{",
		"vigil_test_duration_seconds_count{",
		`service_name="vigil-test"`, // target_info
		"go_goroutines ",
		"process_cpu_seconds_total ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics has no %q:\n%s", want, text)
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "vigil_test_things_total{") && !strings.HasSuffix(line, " 3") {
			t.Errorf("counter line %q, want the value 3", line)
		}
	}
}

// TestNoExportWithoutAsking: without an OTLP endpoint and without
// Prometheus, Setup installs nothing to serve.
func TestNoExportWithoutAsking(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	tel, err := telemetry.Setup(context.Background(), "vigil-test", "0.0.0", "i1", telemetry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if tel.Metrics != nil {
		t.Fatal("Metrics handler without Options.Prometheus")
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}
