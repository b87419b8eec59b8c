// Package telemetry sets up OpenTelemetry tracing and metrics from the
// standard OTEL_* variables, metrics for Prometheus to scrape, JSON logs
// that carry trace_id and span_id, and the NATS header carrier that moves
// W3C trace context between services.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Enabled reports whether an OTLP endpoint is configured; without one no
// tracer provider is installed and nothing is exported over OTLP.
func Enabled() bool {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		if os.Getenv(k) != "" {
			return true
		}
	}
	return os.Getenv("OTEL_SDK_DISABLED") == "false" && os.Getenv("OTEL_TRACES_EXPORTER") == "otlp"
}

// Options choose what Setup exports besides OTLP.
type Options struct {
	// Prometheus collects the metrics for a Prometheus scrape, served by
	// Telemetry.Metrics (with the Go runtime's and the process's).
	Prometheus bool
}

// Telemetry is what Setup installed.
type Telemetry struct {
	// Metrics serves the metrics in the Prometheus exposition format; nil
	// without Options.Prometheus.
	Metrics http.Handler

	stops []func(context.Context) error
}

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for _, stop := range t.stops {
		errs = append(errs, stop(ctx))
	}
	return errors.Join(errs...)
}

// Setup installs the W3C propagator and:
//   - when an OTLP endpoint is set (Enabled), an OTLP/HTTP tracer provider
//     and an OTLP/HTTP metric reader (none when OTEL_METRICS_EXPORTER=none,
//     which concerns OTLP only);
//   - with opts.Prometheus, a metric reader for Prometheus (Telemetry.Metrics).
//
// A meter provider is installed when it has a reader. The resource is
// service, version and instance (OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES override and extend it).
func Setup(ctx context.Context, service, version, instance string, opts Options) (*Telemetry, error) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	t := &Telemetry{}
	otlp := Enabled()
	if !otlp && !opts.Prometheus {
		return t, nil
	}
	res, err := newResource(ctx, service, version, instance)
	if err != nil {
		return nil, err
	}
	var readers []sdkmetric.Option
	if otlp {
		traceExp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, err
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(traceExp), sdktrace.WithResource(res))
		otel.SetTracerProvider(tp)
		t.stops = append(t.stops, tp.Shutdown)
		if os.Getenv("OTEL_METRICS_EXPORTER") != "none" {
			metricExp, err := otlpmetrichttp.New(ctx)
			if err != nil {
				return nil, errors.Join(err, t.Shutdown(ctx))
			}
			readers = append(readers, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metricExp)))
		}
	}
	if opts.Prometheus {
		reader, handler, err := newPrometheus()
		if err != nil {
			return nil, errors.Join(err, t.Shutdown(ctx))
		}
		readers = append(readers, sdkmetric.WithReader(reader))
		t.Metrics = handler
	}
	if len(readers) > 0 {
		mp := sdkmetric.NewMeterProvider(append(readers, sdkmetric.WithResource(res))...)
		otel.SetMeterProvider(mp)
		t.stops = append(t.stops, mp.Shutdown)
	}
	return t, nil
}

// newResource describes the service; attributes from OTEL_SERVICE_NAME /
// OTEL_RESOURCE_ATTRIBUTES come last and win. No schema URL, so detectors
// of other semconv versions merge.
func newResource(ctx context.Context, service, version, instance string) (*resource.Resource, error) {
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithAttributes(
			attribute.String("service.name", service),
			attribute.String("service.version", version),
			attribute.String("service.instance.id", instance),
		),
		resource.WithFromEnv(),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	return res, nil
}

// newPrometheus is a metric reader that a Prometheus scrape of handler
// collects, in a registry of its own with the Go runtime and process
// collectors. OTel names become Prometheus names with units and _total
// (vigil.control.command.duration in s: vigil_control_command_duration_seconds).
func newPrometheus() (sdkmetric.Reader, http.Handler, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, nil, err
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, nil, err
	}
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	return exp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}), nil
}
