// Package telemetry sets up OpenTelemetry tracing and metrics from the
// standard OTEL_* variables, JSON logs that carry trace_id and span_id, and
// the NATS header carrier that moves W3C trace context between services.
package telemetry

import (
	"context"
	"errors"
	"os"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
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
// OTLP/HTTP tracer and meter providers for service (OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES override and extend the resource). The returned
// function flushes and stops them.
func Setup(ctx context.Context, service, version, instance string) (shutdown func(context.Context) error, err error) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	if !Enabled() {
		return func(context.Context) error { return nil }, nil
	}
	res, err := resource.Merge(resource.Default(), resource.NewWithAttributes(semconv.SchemaURL,
		semconv.ServiceName(service), semconv.ServiceVersion(version), semconv.ServiceInstanceID(instance)))
	if err != nil {
		// A schema URL conflict still leaves a usable merged resource.
		res = resource.Default()
	}
	res, _ = resource.Merge(res, envResource(ctx))
	traceExp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(traceExp), sdktrace.WithResource(res))
	metricExp, err := otlpmetrichttp.New(ctx)
	if err != nil {
		return nil, errors.Join(err, tp.Shutdown(ctx))
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metricExp)), sdkmetric.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	return func(ctx context.Context) error {
		return errors.Join(tp.Shutdown(ctx), mp.Shutdown(ctx))
	}, nil
}

// envResource reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
func envResource(ctx context.Context) *resource.Resource {
	r, err := resource.New(ctx, resource.WithFromEnv())
	if err != nil {
		return resource.Empty()
	}
	return r
}
