// Package metrics holds vigil-alerts's OpenTelemetry instruments, all on
// the meter "vigil.dev/services/alerts", so that every part of the service
// counts into the same instruments.
package metrics

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// MeterName is the instrumentation scope of vigil-alerts's metrics.
const MeterName = "vigil.dev/services/alerts"

// Metrics are the service's instruments.
type Metrics struct {
	// Evaluations counts indicator updates evaluated against a user's rules.
	Evaluations metric.Int64Counter
	// Fired counts alerts recorded for the first time (a repeat of an alert
	// id after a redelivery or a failover is not counted).
	Fired metric.Int64Counter
	// DeliveryErrors counts failed attempts to publish or store an alert;
	// the attempt is retried.
	DeliveryErrors metric.Int64Counter
	// WebhookFailures counts webhook notifications given up, by reason
	// (expired: older than the maximum age; undecodable).
	WebhookFailures metric.Int64Counter
	// WebhookDelivered counts webhook notifications a receiver accepted.
	WebhookDelivered metric.Int64Counter
	// WebhookAttemptErrors counts failed webhook attempts (retried).
	WebhookAttemptErrors metric.Int64Counter
	// WebhookFailing is the number of users whose webhook is failing now
	// (the alert in hand failed at least once).
	WebhookFailing metric.Int64UpDownCounter
	// Suppressed counts alerts not recorded because their user was over a
	// limit, by limit (alerts_per_minute).
	Suppressed metric.Int64Counter
	// WebhookPending is, per user (attribute user), the webhook
	// notifications queued and not yet delivered; ObserveWebhookPending
	// gives it its values.
	WebhookPending metric.Int64ObservableGauge
	// EvaluationDuration is how long one update takes, from decoding to the
	// acknowledgement, in milliseconds.
	EvaluationDuration metric.Float64Histogram

	meter metric.Meter
}

// New creates the instruments on mp, the global meter provider when nil.
func New(mp metric.MeterProvider) (*Metrics, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(MeterName)
	m := Metrics{meter: meter}
	var errs [10]error
	m.Evaluations, errs[0] = meter.Int64Counter("vigil.alerts.evaluations",
		metric.WithDescription("Indicator updates evaluated against a user's rules"), metric.WithUnit("{update}"))
	m.Fired, errs[1] = meter.Int64Counter("vigil.alerts.fired",
		metric.WithDescription("Alerts recorded for the first time"), metric.WithUnit("{alert}"))
	m.DeliveryErrors, errs[2] = meter.Int64Counter("vigil.alerts.delivery.errors",
		metric.WithDescription("Failed attempts to publish or store an alert (retried)"), metric.WithUnit("{error}"))
	m.WebhookFailures, errs[3] = meter.Int64Counter("vigil.alerts.webhook.failures",
		metric.WithDescription("Webhook notifications given up, by reason"), metric.WithUnit("{notification}"))
	m.EvaluationDuration, errs[4] = meter.Float64Histogram("vigil.alerts.evaluation.duration",
		metric.WithDescription("Time to evaluate one indicator update and record its alerts"), metric.WithUnit("ms"))
	m.WebhookDelivered, errs[5] = meter.Int64Counter("vigil.alerts.webhook.delivered",
		metric.WithDescription("Webhook notifications accepted by the receiver"), metric.WithUnit("{notification}"))
	m.WebhookAttemptErrors, errs[6] = meter.Int64Counter("vigil.alerts.webhook.attempt.errors",
		metric.WithDescription("Failed webhook attempts (retried until the maximum age)"), metric.WithUnit("{attempt}"))
	m.WebhookFailing, errs[7] = meter.Int64UpDownCounter("vigil.alerts.webhook.failing",
		metric.WithDescription("Users whose webhook is failing now"), metric.WithUnit("{user}"))
	m.Suppressed, errs[8] = meter.Int64Counter("vigil.alerts.suppressed",
		metric.WithDescription("Alerts not recorded because their user was over a limit, by limit"), metric.WithUnit("{alert}"))
	m.WebhookPending, errs[9] = meter.Int64ObservableGauge("vigil.alerts.webhook.pending",
		metric.WithDescription("Webhook notifications of a user queued and not yet delivered (the consumer's pending and unacknowledged)"), metric.WithUnit("{notification}"))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	// Exported from the start (0), so that dashboards and alerting rules
	// see the series before the first webhook fails.
	m.WebhookFailing.Add(context.Background(), 0)
	return &m, nil
}

// ObserveWebhookPending reports WebhookPending from pending (user to
// notifications queued) at each collection until the registration is
// unregistered. pending must not block: it is called on every scrape.
func (m *Metrics) ObserveWebhookPending(pending func() map[string]int64) (metric.Registration, error) {
	return m.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for user, n := range pending() {
			o.ObserveInt64(m.WebhookPending, n, metric.WithAttributes(attribute.String("user", user)))
		}
		return nil
	}, m.WebhookPending)
}
