package daemon

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/config"
)

func TestRunHelpListsTheVariables(t *testing.T) {
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"-h"}, &out); !errors.Is(err, config.ErrHelp) {
		t.Fatalf("Run -h: %v, want ErrHelp", err)
	}
	for _, name := range []string{"NATS_URL", "REDIS_URL", "DATABASE_URL", "VIGIL_WEBHOOK_TIMEOUT", "VIGIL_WEBHOOK_MAX_AGE",
		"VIGIL_WEBHOOK_ACK_WAIT", "VIGIL_ALERTS_WORKERS", "VIGIL_ALERTS_RETRY_BACKOFF"} {
		if !strings.Contains(out.String(), name) {
			t.Errorf("usage does not list %s:\n%s", name, out.String())
		}
	}
}

func TestAlertsValidate(t *testing.T) {
	valid := Alerts{Workers: 4, AckWait: 30 * time.Second, ConsumerInactive: time.Minute, ReconcileInterval: 5 * time.Second,
		RetryBackoff: 100 * time.Millisecond, MaxRetryBackoff: 5 * time.Second, WebhookTimeout: 5 * time.Second,
		WebhookBackoff: 500 * time.Millisecond, WebhookMaxBackoff: 30 * time.Second, WebhookMaxAge: 6 * time.Hour, WebhookAckWait: 30 * time.Second}
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid settings: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Alerts)
		names  string // the variable the error must name
	}{
		{"no workers", func(a *Alerts) { a.Workers = 0 }, "VIGIL_ALERTS_WORKERS"},
		{"no webhook max age", func(a *Alerts) { a.WebhookMaxAge = 0 }, "VIGIL_WEBHOOK_MAX_AGE"},
		{"negative webhook ack wait", func(a *Alerts) { a.WebhookAckWait = -time.Second }, "VIGIL_WEBHOOK_ACK_WAIT"},
		{"zero webhook timeout", func(a *Alerts) { a.WebhookTimeout = 0 }, "VIGIL_WEBHOOK_TIMEOUT"},
		{"negative ack wait", func(a *Alerts) { a.AckWait = -time.Second }, "VIGIL_ALERTS_ACK_WAIT"},
		{"retry backoff above its maximum", func(a *Alerts) { a.MaxRetryBackoff = time.Millisecond }, "VIGIL_ALERTS_MAX_RETRY_BACKOFF"},
		{"webhook backoff above its maximum", func(a *Alerts) { a.WebhookMaxBackoff = time.Millisecond }, "VIGIL_WEBHOOK_MAX_BACKOFF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := valid
			tc.change(&a)
			err := a.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tc.names+":") {
				t.Fatalf("Validate: %v, want an error naming %s", err, tc.names)
			}
		})
	}
}
