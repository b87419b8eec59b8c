// Package webhook notifies users' webhooks of their alerts, at least once
// and in order per user, driven from the durable record of alerts.
//
// Each user with a webhook has a durable consumer of VIGIL_ALERTS,
// vigil-webhook-<user>, filtered on vigil.alert.<user>.>, with
// MaxAckPending 1: the server hands out the user's next alert only once
// the previous one is acknowledged, so the order is kept and a burst waits
// in the stream (back-pressure), never in memory. The instance that owns
// the user (Sync) reads the consumer and POSTs each alert as JSON; a 2xx
// answer acknowledges it. Any failure (network error, timeout, non-2xx
// answer, missing secret) is retried with exponential backoff while the
// alert is reported in progress, until it is older than MaxAge (counted
// from when the stream stored it): then it is given up with one log line
// and counted, and the next alert goes. An alert in hand when the
// instance dies or loses the user is delivered again by the next owner
// (after the consumer's AckWait), so a receiver may see an alert twice
// and drops repeats by its id (X-Vigil-Alert-Id header and "id" in the
// body).
//
// The consumer is created the first time an owner sees the webhook, with
// its start at the time the user's desired state was written (less a
// minute of clock skew), so alerts recorded meanwhile are sent too; it is
// deleted when the user's webhook is removed.
//
// The signature header is X-Vigil-Signature: sha256=<hex HMAC-SHA256 of the
// body keyed with the secret>. The secret is read, at delivery time, from
// the environment variable that the user's settings name
// (webhook.secret_env); it is never stored in the settings and never
// logged. A webhook without secret_env is sent unsigned; one whose variable
// is unset or empty is not sent and retried (the operator may set it and
// restart).
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"vigil.dev/pkg/contract"
)

// Headers of a notification.
const (
	// SignatureHeader carries "sha256=<hex HMAC-SHA256 of the body>".
	SignatureHeader = "X-Vigil-Signature"
	// AlertIDHeader carries the alert id, so a receiver can drop repeats.
	AlertIDHeader = "X-Vigil-Alert-Id"
	// signaturePrefix starts the signature header's value.
	signaturePrefix = "sha256="
)

// Errors of a delivery attempt.
var (
	// ErrNoSecret reports a webhook whose secret variable is unset or empty.
	ErrNoSecret = errors.New("webhook: secret variable unset or empty")
	// ErrAnswer reports a receiver's answer other than 2xx.
	ErrAnswer = errors.New("webhook: receiver answered")
)

// post makes one attempt to deliver body, the JSON of alert id, to hook.
func (d *Deliverer) post(ctx context.Context, hook contract.WebhookSettings, id string, body []byte) error {
	signature := ""
	if hook.SecretEnv != "" {
		secret, ok := d.opts.LookupEnv(hook.SecretEnv)
		if !ok || secret == "" {
			return fmt.Errorf("%w: %s", ErrNoSecret, hook.SecretEnv)
		}
		signature = Sign([]byte(secret), body)
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hook.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "vigil-alerts")
	req.Header.Set(AlertIDHeader, id)
	if signature != "" {
		req.Header.Set(SignatureHeader, signature)
	}
	otel.GetTextMapPropagator().Inject(ctx, propagation.HeaderCarrier(req.Header))
	resp, err := d.opts.Client.Do(req)
	if err != nil {
		return redactURL(err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%w: HTTP %d", ErrAnswer, resp.StatusCode)
	}
	return nil
}

// redactURL drops the URL from a client error: a URL may carry a token
// in its path or query, and errors end up in logs and status.
func redactURL(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return fmt.Errorf("%s: %w", uerr.Op, uerr.Err)
	}
	return err
}

// hostOf is the host of a webhook URL, which logs name instead of the URL.
func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "invalid-url"
	}
	return u.Host
}

// Sign is the X-Vigil-Signature value of body under secret:
// "sha256=" and the hex HMAC-SHA256.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return signaturePrefix + hex.EncodeToString(mac.Sum(nil))
}

// Verify reports whether signature is body's X-Vigil-Signature under
// secret, comparing in constant time. Receivers use it to authenticate a
// notification.
func Verify(secret, body []byte, signature string) bool {
	return hmac.Equal([]byte(Sign(secret, body)), []byte(signature))
}
