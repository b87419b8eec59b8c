package candles

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"vigil.dev/pkg/contract"
)

// MeterName is the OpenTelemetry meter of the feed.
const MeterName = "vigil.dev/services/feed"

// Metrics are the feed's OpenTelemetry instruments. A nil *Metrics records
// nothing.
type Metrics struct {
	meter           metric.Meter
	candlesWritten  metric.Int64Counter
	malformedFrames metric.Int64Counter
	publishFailures metric.Int64Counter
	backfillPages   metric.Int64Counter
	lateUpdates     metric.Int64Counter
	gapFills        metric.Int64Counter
	gapFillSeconds  metric.Float64Histogram

	// lastWrite is when a candle of each exchange/symbol was last written
	// (vigil.feed.last_write, for the stale feed alert).
	mu        sync.Mutex
	lastWrite map[symbolKey]time.Time
}

// NewMetrics creates the instruments on the global meter provider.
func NewMetrics() (*Metrics, error) {
	m := &Metrics{meter: otel.Meter(MeterName)}
	var err error
	counters := []struct {
		dst        *metric.Int64Counter
		name, desc string
		unit       string
	}{
		{&m.candlesWritten, "vigil.feed.candles.written", "candle versions written to Redis and published (rate = candles/s)", "{candle}"},
		{&m.malformedFrames, "vigil.feed.malformed", "malformed market data dropped, by kind", "{item}"},
		{&m.publishFailures, "vigil.feed.publish.failures", "candle publishes JetStream did not acknowledge", "{message}"},
		{&m.backfillPages, "vigil.feed.backfill.pages", "history pages fetched by backfill jobs and gap fills", "{page}"},
		{&m.lateUpdates, "vigil.feed.late", "live updates for bars already closed (REST reconciles them)", "{update}"},
		{&m.gapFills, "vigil.feed.gap_fills", "live-data gaps backfilled after a reconnect or sequence jump", "{gap}"},
	}
	for _, c := range counters {
		if *c.dst, err = m.meter.Int64Counter(c.name, metric.WithDescription(c.desc), metric.WithUnit(c.unit)); err != nil {
			return nil, err
		}
	}
	if m.gapFillSeconds, err = m.meter.Float64Histogram("vigil.feed.gap_fill.duration", metric.WithDescription("reconnect to gap filled"), metric.WithUnit("s")); err != nil {
		return nil, err
	}
	if err := m.observeLastWrite(); err != nil {
		return nil, err
	}
	return m, nil
}

// symbolKey is one market: exchange and symbol.
type symbolKey struct {
	exchange int64
	symbol   string
}

// observeLastWrite reports lastWrite as the gauge vigil.feed.last_write
// (Unix seconds, attributes exchange_id and symbol): a symbol whose value
// stops moving has a stale feed.
func (m *Metrics) observeLastWrite() error {
	m.lastWrite = map[symbolKey]time.Time{}
	_, err := m.meter.Float64ObservableGauge("vigil.feed.last_write", metric.WithUnit("s"),
		metric.WithDescription("when a candle of the symbol was last written (Unix time; stale feed: time() minus this)"),
		metric.WithFloat64Callback(func(_ context.Context, o metric.Float64Observer) error {
			m.mu.Lock()
			defer m.mu.Unlock()
			for k, at := range m.lastWrite {
				o.Observe(float64(at.UnixMilli())/1000, metric.WithAttributes(
					attribute.Int64("exchange_id", k.exchange), attribute.String("symbol", k.symbol)))
			}
			return nil
		}))
	return err
}

// WroteCandles notes when each candle's symbol was last written
// (candlewriter.CandleObserver).
func (m *Metrics) WroteCandles(_ context.Context, cs []contract.Candle) {
	if m == nil {
		return
	}
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range cs {
		m.lastWrite[symbolKey{c.ExchangeID, c.Symbol}] = now
	}
}

// Observe registers callbacks for counters kept elsewhere (REST requests and
// 429s, stream frames), read at each collection.
func (m *Metrics) Observe(name, desc string, read func() map[string]int64) error {
	if m == nil {
		return nil
	}
	_, err := m.meter.Int64ObservableCounter(name, metric.WithDescription(desc), metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
		for kind, v := range read() {
			o.Observe(v, metric.WithAttributes(attribute.String("kind", kind)))
		}
		return nil
	}))
	return err
}

// Written counts candle versions written and published
// (candlewriter.Observer).
func (m *Metrics) Written(ctx context.Context, n int) {
	if m != nil && n > 0 {
		m.candlesWritten.Add(ctx, int64(n))
	}
}

// Malformed counts one dropped malformed item of kind
// (candlewriter.Observer).
func (m *Metrics) Malformed(ctx context.Context, kind string) {
	if m != nil {
		m.malformedFrames.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", kind)))
	}
}

// PublishFailed counts candle publishes JetStream did not acknowledge
// (candlewriter.Observer).
func (m *Metrics) PublishFailed(ctx context.Context, n int) {
	if m != nil {
		m.publishFailures.Add(ctx, int64(n))
	}
}

// BackfillPage counts one history page.
func (m *Metrics) BackfillPage(ctx context.Context, job string) {
	if m != nil {
		m.backfillPages.Add(ctx, 1, metric.WithAttributes(attribute.String("job", job)))
	}
}

func (m *Metrics) late(ctx context.Context) {
	if m != nil {
		m.lateUpdates.Add(ctx, 1)
	}
}

func (m *Metrics) gapFilled(ctx context.Context, seconds float64) {
	if m != nil {
		m.gapFills.Add(ctx, 1)
		m.gapFillSeconds.Record(ctx, seconds)
	}
}
