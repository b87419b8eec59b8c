package daemon

import (
	"fmt"
	"time"

	"vigil.dev/pkg/config"
)

// Config is vigil-alerts's configuration.
type Config struct {
	config.NATS
	config.Service
	config.Redis
	config.Postgres
	Alerts
}

// Alerts are the settings of vigil-alerts itself.
type Alerts struct {
	Workers           int           `env:"VIGIL_ALERTS_WORKERS" envDefault:"4" help:"batches of updates evaluated in parallel; each user stays on one worker, in order"`
	AckWait           time.Duration `env:"VIGIL_ALERTS_ACK_WAIT" envDefault:"30s" help:"redelivery delay of an update that was neither acknowledged nor reported in progress"`
	ConsumerInactive  time.Duration `env:"VIGIL_ALERTS_CONSUMER_INACTIVE" envDefault:"1m" help:"how long the server keeps the consumer of a vanished instance"`
	ReconcileInterval time.Duration `env:"VIGIL_ALERTS_RECONCILE_INTERVAL" envDefault:"5s" help:"how often users are converged besides membership and desired-state changes"`
	RetryBackoff      time.Duration `env:"VIGIL_ALERTS_RETRY_BACKOFF" envDefault:"100ms" help:"first wait before recording an alert again after a NATS or Postgres error"`
	MaxRetryBackoff   time.Duration `env:"VIGIL_ALERTS_MAX_RETRY_BACKOFF" envDefault:"5s" help:"longest wait between attempts to record an alert"`
	AlertsPerMinute   int           `env:"VIGIL_ALERTS_PER_MINUTE" envDefault:"600" help:"alerts a user may fire per minute; the ones beyond are suppressed (not recorded, counted in vigil.alerts.suppressed, logged); 0: no limit"`
	WebhookTimeout    time.Duration `env:"VIGIL_WEBHOOK_TIMEOUT" envDefault:"5s" help:"timeout of one webhook attempt"`
	WebhookBackoff    time.Duration `env:"VIGIL_WEBHOOK_BACKOFF" envDefault:"500ms" help:"wait after the first failed webhook attempt; doubles up to VIGIL_WEBHOOK_MAX_BACKOFF"`
	WebhookMaxBackoff time.Duration `env:"VIGIL_WEBHOOK_MAX_BACKOFF" envDefault:"30s" help:"longest wait between webhook attempts"`
	WebhookMaxAge     time.Duration `env:"VIGIL_WEBHOOK_MAX_AGE" envDefault:"6h" help:"how long an undelivered alert is retried, from when it was recorded; then it is given up, logged and counted"`
	WebhookAckWait    time.Duration `env:"VIGIL_WEBHOOK_ACK_WAIT" envDefault:"30s" help:"how long the alert in hand of a dead instance waits before the next owner sends it (for webhook consumers created from now on)"`
}

// Validate checks every part of the configuration.
func (c Config) Validate() error {
	return config.ValidateAll(c.NATS, c.Service, c.Redis, c.Postgres, c.Alerts)
}

// Validate checks that counts and durations are positive and that each
// maximum backoff is at least its first wait.
func (a Alerts) Validate() error {
	for _, n := range []struct {
		name string
		v    int
	}{{"VIGIL_ALERTS_WORKERS", a.Workers}} {
		if n.v < 1 {
			return fmt.Errorf("%s: %d must be at least 1", n.name, n.v)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"VIGIL_ALERTS_ACK_WAIT", a.AckWait}, {"VIGIL_ALERTS_CONSUMER_INACTIVE", a.ConsumerInactive},
		{"VIGIL_ALERTS_RECONCILE_INTERVAL", a.ReconcileInterval}, {"VIGIL_ALERTS_RETRY_BACKOFF", a.RetryBackoff},
		{"VIGIL_ALERTS_MAX_RETRY_BACKOFF", a.MaxRetryBackoff}, {"VIGIL_WEBHOOK_TIMEOUT", a.WebhookTimeout},
		{"VIGIL_WEBHOOK_BACKOFF", a.WebhookBackoff}, {"VIGIL_WEBHOOK_MAX_BACKOFF", a.WebhookMaxBackoff},
		{"VIGIL_WEBHOOK_MAX_AGE", a.WebhookMaxAge}, {"VIGIL_WEBHOOK_ACK_WAIT", a.WebhookAckWait},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%s: %s must be positive", d.name, d.v)
		}
	}
	if a.AlertsPerMinute < 0 {
		return fmt.Errorf("VIGIL_ALERTS_PER_MINUTE: %d must not be negative (0: no limit)", a.AlertsPerMinute)
	}
	if a.MaxRetryBackoff < a.RetryBackoff {
		return fmt.Errorf("VIGIL_ALERTS_MAX_RETRY_BACKOFF: %s is below VIGIL_ALERTS_RETRY_BACKOFF %s", a.MaxRetryBackoff, a.RetryBackoff)
	}
	if a.WebhookMaxBackoff < a.WebhookBackoff {
		return fmt.Errorf("VIGIL_WEBHOOK_MAX_BACKOFF: %s is below VIGIL_WEBHOOK_BACKOFF %s", a.WebhookMaxBackoff, a.WebhookBackoff)
	}
	return nil
}
