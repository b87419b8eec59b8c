// Package telemetry sets up OpenTelemetry tracing and metrics from the
// standard OTEL_* variables, JSON logs that carry trace_id and span_id, and
// the NATS header carrier that moves W3C trace context between services.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"os"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Enabled reports whether an OTLP endpoint is configured; without one the
// global providers stay no-op and nothing is exported.
func Enabled() bool {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		if os.Getenv(k) != "" {
			return true
		}
	}
	return os.Getenv("OTEL_SDK_DISABLED") == "false" && os.Getenv("OTEL_TRACES_EXPORTER") == "otlp"
}

// Setup installs the W3C propagator and, when an OTLP endpoint is set,
// OTLP/HTTP tracer and meter providers (no meter provider when
// OTEL_METRICS_EXPORTER=none) for service (OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES override and extend the resource). The returned
// function flushes and stops them.
func Setup(ctx context.Context, service, version, instance string) (shutdown func(context.Context) error, err error) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	if !Enabled() {
		return func(context.Context) error { return nil }, nil
	}
	// Attributes from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES come last
	// and win. No schema URL, so detectors of other semconv versions merge.
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
	traceExp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(traceExp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	if os.Getenv("OTEL_METRICS_EXPORTER") == "none" {
		return tp.Shutdown, nil
	}
	metricExp, err := otlpmetrichttp.New(ctx)
	if err != nil {
		return nil, errors.Join(err, tp.Shutdown(ctx))
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metricExp)), sdkmetric.WithResource(res))
	otel.SetMeterProvider(mp)
	return func(ctx context.Context) error {
		return errors.Join(tp.Shutdown(ctx), mp.Shutdown(ctx))
	}, nil
}
