package webhook_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/alerts/internal/metrics/metricstest"
	"vigil.dev/services/alerts/internal/webhook"
)

const (
	secretVar = "VIGIL_TEST_HOOK_SECRET"
	secret    = "s3cr3t-hook-key"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// request is what the receiver saw of one notification.
type request struct {
	body      []byte
	signature string
	alertID   string
}

// receiver is a loopback webhook receiver answering with the statuses of
// answers in turn (200 once they run out).
type receiver struct {
	t       *testing.T
	mu      sync.Mutex
	answers []int
	got     []request
	arrived chan struct{}
	// hold, when set, delays every answer until it is closed.
	hold chan struct{}
}

func newReceiver(t *testing.T, answers ...int) (*receiver, *httptest.Server) {
	r := &receiver{t: t, answers: answers, arrived: make(chan struct{}, 100)}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return r, srv
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		r.t.Errorf("read body: %v", err)
	}
	r.mu.Lock()
	r.got = append(r.got, request{body: body, signature: req.Header.Get(webhook.SignatureHeader), alertID: req.Header.Get(webhook.AlertIDHeader)})
	status := http.StatusOK
	if len(r.answers) > 0 {
		status, r.answers = r.answers[0], r.answers[1:]
	}
	hold := r.hold
	r.mu.Unlock()
	r.arrived <- struct{}{}
	if hold != nil {
		<-hold
	}
	w.WriteHeader(status)
}

func (r *receiver) requests() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]request(nil), r.got...)
}

func lookup(name string) (string, bool) {
	if name == secretVar {
		return secret, true
	}
	return "", false
}

func alert(id string) contract.Alert {
	return contract.Alert{ID: id, User: "alice", UserID: 1, ExchangeID: 1, RuleID: "r1", Kind: contract.RuleThreshold,
		Symbol: "BTC-USD", Timeframe: contract.TF1m, BarStart: 1_767_225_600, Message: "BTC-USD 1m price rose above 100 (101)",
		Value: 101, FiredAt: time.Unix(1_767_225_661, 0).UTC()}
}

func TestNotify(t *testing.T) {
	cases := []struct {
		name       string
		answers    []int
		secretEnv  string
		requests   int    // the receiver sees this many requests
		failReason string // the notification is given up for this reason
		signed     bool
	}{
		{name: "delivered at once", answers: []int{200}, secretEnv: secretVar, requests: 1, signed: true},
		{name: "retried after 500", answers: []int{500, 200}, secretEnv: secretVar, requests: 2, signed: true},
		{name: "retried after 429 and 503", answers: []int{429, 503, 204}, secretEnv: secretVar, requests: 3, signed: true},
		{name: "given up after the last attempt", answers: []int{500, 502, 500}, secretEnv: secretVar, requests: 3, failReason: webhook.ReasonExhausted, signed: true},
		{name: "4xx is not retried", answers: []int{400}, secretEnv: secretVar, requests: 1, failReason: webhook.ReasonRejected, signed: true},
		{name: "unset secret variable sends nothing", secretEnv: "VIGIL_TEST_UNSET", requests: 0, failReason: webhook.ReasonNoSecret},
		{name: "no secret_env sends unsigned", answers: []int{200}, requests: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rcv, srv := newReceiver(t, tc.answers...)
			m, reader, err := metricstest.New()
			if err != nil {
				t.Fatal(err)
			}
			// A generous attempt timeout: a loaded machine must not turn a
			// slow 200 into a retry; retries here come from status codes.
			n, err := webhook.New(webhook.Options{Attempts: 3, InitialBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
				Timeout: time.Minute, LookupEnv: lookup, Log: quiet, Metrics: m})
			if err != nil {
				t.Fatal(err)
			}
			a := alert("alice.r1.1767225600")
			if err := n.Notify(context.Background(), contract.WebhookSettings{URL: srv.URL + "/hook", SecretEnv: tc.secretEnv}, a); err != nil {
				t.Fatal(err)
			}
			// Close waits for the notification to be delivered or given up.
			if err := n.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			got := rcv.requests()
			if len(got) != tc.requests {
				t.Fatalf("receiver saw %d requests, want %d", len(got), tc.requests)
			}
			for i, r := range got {
				var decoded contract.Alert
				if err := json.Unmarshal(r.body, &decoded); err != nil {
					t.Fatalf("request %d: body is not an alert: %v", i, err)
				}
				if decoded != a {
					t.Errorf("request %d: body %+v, want %+v", i, decoded, a)
				}
				if r.alertID != a.ID {
					t.Errorf("request %d: %s %q, want %q", i, webhook.AlertIDHeader, r.alertID, a.ID)
				}
				switch {
				case tc.signed && !webhook.Verify([]byte(secret), r.body, r.signature):
					t.Errorf("request %d: signature %q does not verify", i, r.signature)
				case !tc.signed && r.signature != "":
					t.Errorf("request %d: unexpected signature %q", i, r.signature)
				}
			}
			failed, err := reader.Sum("vigil.alerts.webhook.failures")
			if err != nil {
				t.Fatal(err)
			}
			want := int64(0)
			if tc.failReason != "" {
				want = 1
				byReason, err := reader.Sum("vigil.alerts.webhook.failures", attribute.String("reason", tc.failReason))
				if err != nil {
					t.Fatal(err)
				}
				if byReason != 1 {
					t.Errorf("failures with reason %s = %d, want 1", tc.failReason, byReason)
				}
			}
			if failed != want {
				t.Errorf("failures = %d, want %d", failed, want)
			}
		})
	}
}

func TestNotifyDropsWhenTheQueueIsFull(t *testing.T) {
	rcv, srv := newReceiver(t)
	hold := make(chan struct{})
	rcv.hold = hold
	m, reader, err := metricstest.New()
	if err != nil {
		t.Fatal(err)
	}
	n, err := webhook.New(webhook.Options{QueueSize: 2, LookupEnv: lookup, Log: quiet, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	hook := contract.WebhookSettings{URL: srv.URL, SecretEnv: secretVar}
	ctx := context.Background()
	// The first notification is in flight, held by the receiver; two more
	// fill the queue; the fourth is dropped without waiting.
	if err := n.Notify(ctx, hook, alert("a1")); err != nil {
		t.Fatal(err)
	}
	<-rcv.arrived
	for _, id := range []string{"a2", "a3"} {
		if err := n.Notify(ctx, hook, alert(id)); err != nil {
			t.Fatalf("notify %s: %v", id, err)
		}
	}
	if p := n.Pending("alice"); p != 2 {
		t.Fatalf("pending = %d, want 2", p)
	}
	began := time.Now()
	if err := n.Notify(ctx, hook, alert("a4")); !errors.Is(err, webhook.ErrQueueFull) {
		t.Fatalf("notify on a full queue: %v, want ErrQueueFull", err)
	}
	if d := time.Since(began); d > time.Second {
		t.Fatalf("notify on a full queue blocked for %s", d)
	}
	// Another user's queue is not affected.
	other := alert("b1")
	other.User = "bob"
	if err := n.Notify(ctx, hook, other); err != nil {
		t.Fatalf("notify bob: %v", err)
	}
	if dropped, err := reader.Sum("vigil.alerts.webhook.failures", attribute.String("reason", webhook.ReasonQueueFull)); err != nil || dropped != 1 {
		t.Fatalf("queue_full failures = %d (%v), want 1", dropped, err)
	}
	close(hold)
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var alice []string
	for _, r := range rcv.requests() {
		if r.alertID != "b1" {
			alice = append(alice, r.alertID)
		}
	}
	if want := []string{"a1", "a2", "a3"}; !slices.Equal(alice, want) {
		t.Fatalf("alice's deliveries %v, want %v in order", alice, want)
	}
	if err := n.Notify(ctx, hook, alert("a5")); !errors.Is(err, webhook.ErrClosed) {
		t.Fatalf("notify after close: %v, want ErrClosed", err)
	}
}

func TestCloseGivesUpWhenItsContextEnds(t *testing.T) {
	_, srv := newReceiver(t, 500, 500, 500, 500, 500)
	n, err := webhook.New(webhook.Options{Attempts: 5, InitialBackoff: time.Hour, MaxBackoff: time.Hour, LookupEnv: lookup, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Notify(context.Background(), contract.WebhookSettings{URL: srv.URL}, alert("a1")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := n.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("close: %v, want the deadline", err)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for name, opts := range map[string]webhook.Options{
		"attempts":   {Attempts: -1},
		"queue size": {QueueSize: -3},
		"backoff":    {InitialBackoff: time.Second, MaxBackoff: time.Millisecond},
		"timeout":    {Timeout: -time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := webhook.New(opts); !errors.Is(err, webhook.ErrInvalidOptions) {
				t.Fatalf("New: %v, want ErrInvalidOptions", err)
			}
		})
	}
}

func TestSignAndVerify(t *testing.T) {
	// RFC 4231-style vector: HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog").
	body := []byte("The quick brown fox jumps over the lazy dog")
	want := "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
	if got := webhook.Sign([]byte("key"), body); got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
	for _, tc := range []struct {
		name      string
		secret    string
		body      string
		signature string
		ok        bool
	}{
		{"valid", "key", string(body), want, true},
		{"other secret", "kez", string(body), want, false},
		{"tampered body", "key", string(body) + ".", want, false},
		{"no prefix", "key", string(body), want[len("sha256="):], false},
		{"empty", "key", string(body), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := webhook.Verify([]byte(tc.secret), []byte(tc.body), tc.signature); got != tc.ok {
				t.Fatalf("Verify = %v, want %v", got, tc.ok)
			}
		})
	}
}
