package alerts

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
	for _, name := range []string{"NATS_URL", "REDIS_URL", "DATABASE_URL", "VIGIL_WEBHOOK_TIMEOUT", "VIGIL_WEBHOOK_ATTEMPTS",
		"VIGIL_WEBHOOK_QUEUE", "VIGIL_ALERTS_WORKERS", "VIGIL_ALERTS_RETRY_BACKOFF"} {
		if !strings.Contains(out.String(), name) {
			t.Errorf("usage does not list %s:\n%s", name, out.String())
		}
	}
}

func TestAlertsValidate(t *testing.T) {
	valid := Alerts{Workers: 4, AckWait: 30 * time.Second, ConsumerInactive: time.Minute, ReconcileInterval: 5 * time.Second,
		RetryBackoff: 100 * time.Millisecond, MaxRetryBackoff: 5 * time.Second, WebhookTimeout: 5 * time.Second,
		WebhookAttempts: 5, WebhookBackoff: 500 * time.Millisecond, WebhookMaxBackoff: 30 * time.Second, WebhookQueue: 100}
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid settings: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Alerts)
		names  string // the variable the error must name
	}{
		{"no workers", func(a *Alerts) { a.Workers = 0 }, "VIGIL_ALERTS_WORKERS"},
		{"no webhook attempts", func(a *Alerts) { a.WebhookAttempts = 0 }, "VIGIL_WEBHOOK_ATTEMPTS"},
		{"no webhook queue", func(a *Alerts) { a.WebhookQueue = -1 }, "VIGIL_WEBHOOK_QUEUE"},
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
