// Package webhook notifies users' webhooks of their alerts: an HTTP POST of
// the alert as JSON, signed with HMAC-SHA256, retried with exponential
// backoff on network errors, 429 and 5xx answers, for a bounded number of
// attempts.
//
// Notifications never block the caller: each user has a bounded queue
// drained by one goroutine, in order. When the queue is full the
// notification is dropped, counted (vigil.alerts.webhook.failures,
// reason queue_full) and logged; the alert itself is already durable in
// the VIGIL_ALERTS stream and in Postgres.
//
// The signature header is X-Vigil-Signature: sha256=<hex HMAC-SHA256 of the
// body keyed with the secret>. The secret is read, at delivery time, from
// the environment variable that the user's settings name
// (webhook.secret_env); it is never stored in the settings and never
// logged. A webhook without secret_env is sent unsigned; one whose variable
// is unset or empty is not sent at all.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/alerts/internal/metrics"
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

// Errors of the notifier.
var (
	// ErrInvalidOptions reports unusable Options.
	ErrInvalidOptions = errors.New("webhook: invalid options")
	// ErrQueueFull reports a notification dropped because the user's queue
	// was full.
	ErrQueueFull = errors.New("webhook: queue full")
	// ErrClosed reports a notification after Close.
	ErrClosed = errors.New("webhook: notifier closed")
	// ErrNoSecret reports a webhook whose secret variable is unset or empty.
	ErrNoSecret = errors.New("webhook: secret variable unset or empty")
	// ErrRejected reports a 4xx answer other than 429; it is not retried.
	ErrRejected = errors.New("webhook: rejected by the receiver")
	// ErrServer reports a 429 or 5xx answer; it is retried.
	ErrServer = errors.New("webhook: receiver failed")
)

// Failure reasons, the "reason" attribute of vigil.alerts.webhook.failures.
const (
	ReasonQueueFull = "queue_full"
	ReasonExhausted = "exhausted"
	ReasonRejected  = "rejected"
	ReasonNoSecret  = "no_secret"
)

// Options configure a Notifier. Zero values take the defaults in brackets.
type Options struct {
	// Timeout bounds one attempt [5s].
	Timeout time.Duration
	// Attempts bounds the attempts per notification [5].
	Attempts int
	// InitialBackoff is the wait after the first failure [500ms]; it
	// doubles, with jitter, up to MaxBackoff [30s].
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// QueueSize is the number of notifications a user may have waiting [100].
	QueueSize int
	// Client sends the requests [a new http.Client].
	Client *http.Client
	// LookupEnv reads a secret variable [os.LookupEnv].
	LookupEnv func(string) (string, bool)
	// Log receives one line per notification given up [slog.Default()].
	Log *slog.Logger
	// Metrics counts failures [instruments on the global meter provider].
	Metrics *metrics.Metrics
}

func (o *Options) setDefaults() error {
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Attempts == 0 {
		o.Attempts = 5
	}
	if o.InitialBackoff == 0 {
		o.InitialBackoff = 500 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.QueueSize == 0 {
		o.QueueSize = 100
	}
	switch {
	case o.Timeout < 0:
		return fmt.Errorf("%w: timeout %s must be positive", ErrInvalidOptions, o.Timeout)
	case o.Attempts < 1:
		return fmt.Errorf("%w: attempts %d must be at least 1", ErrInvalidOptions, o.Attempts)
	case o.InitialBackoff < 0 || o.MaxBackoff < o.InitialBackoff:
		return fmt.Errorf("%w: backoff %s..%s must be positive and increasing", ErrInvalidOptions, o.InitialBackoff, o.MaxBackoff)
	case o.QueueSize < 1:
		return fmt.Errorf("%w: queue size %d must be at least 1", ErrInvalidOptions, o.QueueSize)
	}
	if o.Client == nil {
		o.Client = &http.Client{}
	}
	if o.LookupEnv == nil {
		o.LookupEnv = os.LookupEnv
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Metrics == nil {
		m, err := metrics.New(nil)
		if err != nil {
			return fmt.Errorf("%w: metrics: %w", ErrInvalidOptions, err)
		}
		o.Metrics = m
	}
	return nil
}

// Notifier delivers notifications, one queue per user.
type Notifier struct {
	opts Options
	// ctx ends when Close gives up waiting; it cancels attempts in flight.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	queues map[string]chan job
}

// job is one notification waiting in a user's queue.
type job struct {
	// trace carries the trace of the evaluation that fired the alert,
	// without its cancellation.
	trace context.Context
	hook  contract.WebhookSettings
	alert contract.Alert
}

// New checks opts and returns a running notifier; Close stops it.
func New(opts Options) (*Notifier, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Notifier{opts: opts, ctx: ctx, cancel: cancel, queues: map[string]chan job{}}, nil
}

// Notify queues alert a for hook and returns at once. It fails with
// ErrQueueFull (counted and logged) when a's user has QueueSize
// notifications waiting, and with ErrClosed after Close. ctx only passes
// its trace on to the request.
func (n *Notifier) Notify(ctx context.Context, hook contract.WebhookSettings, a contract.Alert) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	q, ok := n.queues[a.User]
	if !ok {
		q = make(chan job, n.opts.QueueSize)
		n.queues[a.User] = q
		n.wg.Add(1)
		go n.drain(q)
	}
	select {
	case q <- job{trace: context.WithoutCancel(ctx), hook: hook, alert: a}:
		return nil
	default:
		n.fail(ctx, a, hook, ReasonQueueFull, ErrQueueFull)
		return fmt.Errorf("user %s: %w (%d waiting)", a.User, ErrQueueFull, n.opts.QueueSize)
	}
}

// Pending is the number of notifications waiting in user's queue.
func (n *Notifier) Pending(user string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.queues[user])
}

// Close stops accepting notifications and waits until the queued ones are
// delivered or given up. When ctx ends first, the attempts in flight are
// cancelled, the rest is dropped and ctx's error returned.
func (n *Notifier) Close(ctx context.Context) error {
	n.mu.Lock()
	if !n.closed {
		n.closed = true
		for _, q := range n.queues {
			close(q)
		}
	}
	n.mu.Unlock()
	done := make(chan struct{})
	go func() {
		n.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		n.cancel()
		return nil
	case <-ctx.Done():
		n.cancel()
		<-done
		return fmt.Errorf("webhook: close: %w", ctx.Err())
	}
}

// drain delivers the jobs of one user's queue in order.
func (n *Notifier) drain(q <-chan job) {
	defer n.wg.Done()
	for j := range q {
		if n.ctx.Err() != nil {
			continue // Close gave up: drop what is left
		}
		n.deliver(j)
	}
}

// deliver sends one notification with retries and counts it when given up.
func (n *Notifier) deliver(j job) {
	body, err := json.Marshal(j.alert)
	if err != nil {
		n.fail(j.trace, j.alert, j.hook, ReasonRejected, err)
		return
	}
	signature := ""
	if j.hook.SecretEnv != "" {
		secret, ok := n.opts.LookupEnv(j.hook.SecretEnv)
		if !ok || secret == "" {
			n.fail(j.trace, j.alert, j.hook, ReasonNoSecret, fmt.Errorf("%w: %s", ErrNoSecret, j.hook.SecretEnv))
			return
		}
		signature = Sign([]byte(secret), body)
	}
	exp := backoff.NewExponentialBackOff()
	exp.InitialInterval = n.opts.InitialBackoff
	exp.MaxInterval = n.opts.MaxBackoff
	attempt := func() (struct{}, error) {
		return struct{}{}, n.post(j, body, signature)
	}
	_, err = backoff.Retry(n.ctx, attempt, backoff.WithBackOff(exp),
		backoff.WithMaxTries(uint(n.opts.Attempts)), backoff.WithMaxElapsedTime(0))
	switch {
	case err == nil:
	case errors.Is(err, ErrRejected):
		n.fail(j.trace, j.alert, j.hook, ReasonRejected, err)
	default:
		n.fail(j.trace, j.alert, j.hook, ReasonExhausted, fmt.Errorf("after %d attempts: %w", n.opts.Attempts, err))
	}
}

// post makes one attempt. Errors that must not be retried are wrapped in
// backoff.Permanent.
func (n *Notifier) post(j job, body []byte, signature string) error {
	ctx, cancel := context.WithTimeout(n.ctx, n.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, j.hook.URL, bytes.NewReader(body))
	if err != nil {
		return backoff.Permanent(fmt.Errorf("%w: %w", ErrRejected, err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "vigil-alerts")
	req.Header.Set(AlertIDHeader, j.alert.ID)
	if signature != "" {
		req.Header.Set(SignatureHeader, signature)
	}
	otel.GetTextMapPropagator().Inject(j.trace, propagation.HeaderCarrier(req.Header))
	resp, err := n.opts.Client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("%w: HTTP %d", ErrServer, resp.StatusCode)
	default:
		return backoff.Permanent(fmt.Errorf("%w: HTTP %d", ErrRejected, resp.StatusCode))
	}
}

// fail counts and logs a notification given up. The log names the
// receiver's host only: a URL may carry a token in its path or query.
func (n *Notifier) fail(ctx context.Context, a contract.Alert, hook contract.WebhookSettings, reason string, err error) {
	n.opts.Metrics.WebhookFailures.Add(ctx, 1, metric.WithAttributes(attribute.String("reason", reason)))
	n.opts.Log.WarnContext(ctx, "webhook notification given up", "user", a.User, "alert", a.ID,
		"host", hostOf(hook.URL), "reason", reason, "err", err)
}

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
