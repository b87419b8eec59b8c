// Package metricstest records vigil-alerts's metrics in memory, for tests
// that check what was counted.
package metricstest

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"vigil.dev/services/alerts/internal/metrics"
)

// Reader collects the instruments of a metrics.Metrics made with New.
type Reader struct {
	reader *sdkmetric.ManualReader
}

// New returns metrics recorded in memory and the reader of them.
func New() (*metrics.Metrics, *Reader, error) {
	reader := sdkmetric.NewManualReader()
	m, err := metrics.New(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
	if err != nil {
		return nil, nil, err
	}
	return m, &Reader{reader: reader}, nil
}

// Sum is the value of the counter named name over the data points whose
// attributes include attrs (all points when attrs is empty).
func (r *Reader) Sum(name string, attrs ...attribute.KeyValue) (int64, error) {
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		return 0, err
	}
	var total int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if m.Name != name || !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				if hasAll(dp.Attributes, attrs) {
					total += dp.Value
				}
			}
		}
	}
	return total, nil
}

// Gauge is the value of the int64 gauge named name at the data point whose
// attributes include attrs; ok is false when there is none.
func (r *Reader) Gauge(name string, attrs ...attribute.KeyValue) (value int64, ok bool, err error) {
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		return 0, false, err
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			gauge, isGauge := m.Data.(metricdata.Gauge[int64])
			if m.Name != name || !isGauge {
				continue
			}
			for _, dp := range gauge.DataPoints {
				if hasAll(dp.Attributes, attrs) {
					return dp.Value, true, nil
				}
			}
		}
	}
	return 0, false, nil
}

func hasAll(set attribute.Set, attrs []attribute.KeyValue) bool {
	for _, kv := range attrs {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}
