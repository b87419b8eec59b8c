package series

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// MeterName is the OpenTelemetry meter of vigil-indicators.
const MeterName = "vigil.dev/services/indicators"

// metrics are the engine's instruments.
type metrics struct {
	compute  metric.Float64Histogram
	updates  metric.Int64Counter
	rebuilds metric.Int64Counter
	fenced   metric.Int64Counter
}

func newMetrics() (metrics, error) {
	meter := otel.Meter(MeterName)
	var m metrics
	var err error
	if m.compute, err = meter.Float64Histogram("vigil.indicators.compute.duration", metric.WithUnit("s"),
		metric.WithDescription("time to compute the indicators of one candle update, rebuild or book snapshot")); err != nil {
		return m, err
	}
	if m.updates, err = meter.Int64Counter("vigil.indicators.updates", metric.WithUnit("{update}"),
		metric.WithDescription("indicator updates published")); err != nil {
		return m, err
	}
	if m.rebuilds, err = meter.Int64Counter("vigil.indicators.rebuilds", metric.WithUnit("{rebuild}"),
		metric.WithDescription("series rebuilt from the candles in Redis")); err != nil {
		return m, err
	}
	if m.fenced, err = meter.Int64Counter("vigil.indicators.fenced", metric.WithUnit("{update}"),
		metric.WithDescription("indicator writes refused because another instance took the series' partition")); err != nil {
		return m, err
	}
	return m, nil
}

func (m metrics) observeCompute(ctx context.Context, d time.Duration, kind string) {
	m.compute.Record(ctx, d.Seconds(), metric.WithAttributes(attribute.String("kind", kind)))
}

func (m metrics) countUpdate(ctx context.Context, closed bool) {
	m.updates.Add(ctx, 1, metric.WithAttributes(attribute.Bool("closed", closed)))
}

func (m metrics) countRebuild(ctx context.Context) { m.rebuilds.Add(ctx, 1) }

func (m metrics) countFenced(ctx context.Context) { m.fenced.Add(ctx, 1) }
