package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/alerts/internal/metrics/metricstest"
	"vigil.dev/services/alerts/internal/record"
	"vigil.dev/services/alerts/internal/webhook"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

const (
	secretVar = "VIGIL_TEST_HOOK_SECRET"
	secret    = "s3cr3t-hook-key"
)

func lookup(name string) (string, bool) {
	if name == secretVar {
		return secret, true
	}
	return "", false
}

// request is what the receiver saw of one notification.
type request struct {
	body      []byte
	signature string
	alertID   string
}

// receiver is a loopback webhook receiver; status decides each answer.
type receiver struct {
	mu     sync.Mutex
	got    []request
	status func(n int) int
}

func newReceiver(t *testing.T, status func(n int) int) (*receiver, *httptest.Server) {
	r := &receiver{status: status}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return r, srv
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.got = append(r.got, request{body: body, signature: req.Header.Get(webhook.SignatureHeader), alertID: req.Header.Get(webhook.AlertIDHeader)})
	status := http.StatusOK
	if r.status != nil {
		status = r.status(len(r.got))
	}
	r.mu.Unlock()
	w.WriteHeader(status)
}

func (r *receiver) requests() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// delivered is, per user, the ids of the requests answered with anything,
// in arrival order, consecutive repeats (retries) folded.
func (r *receiver) ids() map[string][]string {
	out := map[string][]string{}
	for _, req := range r.requests() {
		user, _, _ := strings.Cut(req.alertID, ".")
		if ids := out[user]; len(ids) == 0 || ids[len(ids)-1] != req.alertID {
			out[user] = append(ids, req.alertID)
		}
	}
	return out
}

// logBuffer keeps what the deliverer logs.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// fixture is a NATS server with the streams, a recorder and options for
// deliverers.
type fixture struct {
	t    *testing.T
	js   jetstream.JetStream
	rec  *record.Recorder
	log  *logBuffer
	opts webhook.Options
	read *metricstest.Reader
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	_, js := testenv.Connect(t, testenv.StartNATS(t).URL())
	if err := natsx.EnsureStreams(context.Background(), js); err != nil {
		t.Fatal(err)
	}
	m, read, err := metricstest.New()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, js: js, rec: record.New(js), log: &logBuffer{}, read: read}
	f.opts = webhook.Options{Timeout: time.Minute, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		AckWait: 2 * time.Second, LookupEnv: lookup, Log: slog.New(slog.NewJSONHandler(f.log, nil)), Metrics: m}
	return f
}

func (f *fixture) deliverer(opts webhook.Options) *webhook.Deliverer {
	f.t.Helper()
	d, err := webhook.New(f.js, opts)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(d.Close)
	return d
}

// alert is user's alert number i.
func alert(user string, i int) record.Alert {
	start := int64(1_767_225_600) + int64(i)*60
	return record.Alert{Alert: contract.Alert{ID: contract.AlertID(user, "r1", start), User: user, UserID: 1, RuleID: "r1",
		Kind: contract.RuleThreshold, Symbol: "BTC-USD", Timeframe: contract.TF1m, BarStart: start, Message: "m", Value: 1,
		FiredAt: time.Unix(start+60, 0).UTC()}}
}

// record records alerts from..to-1 of each user, in batches of 50, and
// returns each user's ids in order.
func (f *fixture) record(from, to int, users ...string) map[string][]string {
	f.t.Helper()
	ids := map[string][]string{}
	var batch []record.Alert
	flush := func() {
		if _, err := f.rec.Record(context.Background(), batch); err != nil {
			f.t.Fatal(err)
		}
		batch = batch[:0]
	}
	for i := from; i < to; i++ {
		for _, u := range users {
			a := alert(u, i)
			batch = append(batch, a)
			ids[u] = append(ids[u], a.ID)
			if len(batch) == 50 {
				flush()
			}
		}
	}
	if len(batch) > 0 {
		flush()
	}
	return ids
}

// waitDelivered waits until r has seen every id of want, per user.
func waitDelivered(t *testing.T, r *receiver, want map[string][]string, timeout time.Duration) map[string][]string {
	t.Helper()
	var got map[string][]string
	testenv.WaitFor(t, timeout, "every alert at the receiver", func() bool {
		got = r.ids()
		for user, ids := range want {
			if len(got[user]) < len(ids) {
				return false
			}
		}
		return true
	})
	return got
}

// checkOrder fails unless got holds every id of want once, in order: retries
// of one alert are folded, and a redelivery after a restart may repeat the
// alert in hand, never an earlier one.
func checkOrder(t *testing.T, got, want map[string][]string) {
	t.Helper()
	for user, ids := range want {
		if !slices.Equal(got[user], ids) {
			t.Errorf("%s: receiver got %d ids %v..., want %d in order", user, len(got[user]), head(got[user]), len(ids))
		}
	}
}

func head(ids []string) []string { return ids[:min(len(ids), 5)] }

// TestDeliversEveryAlertInOrderThroughAnOutage: the receiver answers 500 to
// the first 40 requests, then 200; every alert of two users arrives, signed,
// with its id in header and body, in each user's order.
func TestDeliversEveryAlertInOrderThroughAnOutage(t *testing.T) {
	f := newFixture(t)
	r, srv := newReceiver(t, func(n int) int {
		if n <= 40 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	d := f.deliverer(f.opts)
	hook := contract.WebhookSettings{URL: srv.URL + "/hooks/vigil", SecretEnv: secretVar}
	since := time.Now()
	d.Sync(context.Background(), map[string]webhook.Target{"alice": {Hook: hook, Since: since}, "bob": {Hook: hook, Since: since}}, nil)
	want := f.record(0, 30, "alice", "bob")
	got := waitDelivered(t, r, want, time.Minute)
	checkOrder(t, got, want)
	for _, req := range r.requests() {
		var a contract.Alert
		if err := json.Unmarshal(req.body, &a); err != nil || a.ID != req.alertID {
			t.Fatalf("body %s (%v) does not carry the header's id %s", req.body, err, req.alertID)
		}
		if !webhook.Verify([]byte(secret), req.body, req.signature) {
			t.Fatalf("alert %s: bad signature %q", req.alertID, req.signature)
		}
	}
	if n, err := f.read.Sum("vigil.alerts.webhook.attempt.errors"); err != nil || n != 40 {
		t.Errorf("attempt errors %d (%v), want 40", n, err)
	}
	if n, err := f.read.Sum("vigil.alerts.webhook.failures"); err != nil || n != 0 {
		t.Errorf("given up %d (%v), want 0", n, err)
	}
	testenv.WaitFor(t, 10*time.Second, "nothing pending", func() bool {
		st := d.Status(context.Background())
		return st["alice"].Pending == 0 && st["bob"].Pending == 0 && !st["alice"].Failing && st["alice"].Delivered == 30
	})
	if strings.Contains(f.log.String(), secret) {
		t.Error("the secret was logged")
	}
}

// TestABurstIsNeverDropped records several hundred alerts at once for one
// user while the receiver is slow to start: all arrive, in order.
func TestABurstIsNeverDropped(t *testing.T) {
	f := newFixture(t)
	r, srv := newReceiver(t, nil)
	d := f.deliverer(f.opts)
	want := f.record(0, 400, "alice")
	began := time.Now()
	d.Sync(context.Background(), map[string]webhook.Target{"alice": {Hook: contract.WebhookSettings{URL: srv.URL}, Since: time.Now().Add(-time.Hour)}}, nil)
	got := waitDelivered(t, r, want, 2*time.Minute)
	t.Logf("400 alerts of one user delivered in %s", time.Since(began).Round(time.Millisecond))
	checkOrder(t, got, want)
	if n := len(r.requests()); n != 400 {
		t.Errorf("receiver got %d requests for 400 alerts", n)
	}
}

// TestPendingAlertsSurviveTheDeliverer: a deliverer stops (as its
// instance dies) with alerts pending and one in hand; another one, like
// the restarted instance, delivers all of them, in order.
func TestPendingAlertsSurviveTheDeliverer(t *testing.T) {
	f := newFixture(t)
	failing := make(chan struct{})
	r, srv := newReceiver(t, func(int) int {
		select {
		case <-failing:
			return http.StatusOK
		default:
			return http.StatusServiceUnavailable
		}
	})
	target := map[string]webhook.Target{"alice": {Hook: contract.WebhookSettings{URL: srv.URL}, Since: time.Now()}}
	first, err := webhook.New(f.js, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	first.Sync(context.Background(), target, nil)
	want := f.record(0, 50, "alice")
	testenv.WaitFor(t, 30*time.Second, "failing attempts", func() bool { return len(r.requests()) >= 3 })
	first.Close()
	close(failing)
	second := f.deliverer(f.opts)
	second.Sync(context.Background(), target, nil)
	got := waitDelivered(t, r, want, time.Minute)
	checkOrder(t, got, want)
}

// TestPendingGaugeIsTheBacklog: vigil.alerts.webhook.pending shows each
// user's queued notifications: 0 for a user whose receiver takes them,
// all 20 (19 queued, 1 in hand) for one whose receiver fails, 0 again once
// it recovers and everything is delivered, and no series once the user's
// webhook is no longer run here.
func TestPendingGaugeIsTheBacklog(t *testing.T) {
	f := newFixture(t)
	var up atomic.Bool
	failingRecv, failingSrv := newReceiver(t, func(int) int {
		if up.Load() {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	})
	okRecv, okSrv := newReceiver(t, nil)
	opts := f.opts
	opts.PendingRefresh = 50 * time.Millisecond
	d := f.deliverer(opts)
	since := time.Now()
	d.Sync(context.Background(), map[string]webhook.Target{
		"alice": {Hook: contract.WebhookSettings{URL: failingSrv.URL}, Since: since},
		"bob":   {Hook: contract.WebhookSettings{URL: okSrv.URL}, Since: since},
	}, nil)
	pending := func(user string) (int64, bool) {
		n, ok, err := f.read.Gauge("vigil.alerts.webhook.pending", attribute.String("user", user))
		if err != nil {
			t.Fatal(err)
		}
		return n, ok
	}
	want := f.record(0, 20, "alice", "bob")
	waitDelivered(t, okRecv, map[string][]string{"bob": want["bob"]}, time.Minute)
	testenv.WaitFor(t, 30*time.Second, "alice's 20 alerts pending, bob's none", func() bool {
		a, aok := pending("alice")
		b, bok := pending("bob")
		return aok && bok && a == 20 && b == 0
	})
	up.Store(true)
	waitDelivered(t, failingRecv, map[string][]string{"alice": want["alice"]}, time.Minute)
	testenv.WaitFor(t, 30*time.Second, "alice's backlog gone", func() bool {
		a, ok := pending("alice")
		return ok && a == 0
	})
	d.Sync(context.Background(), map[string]webhook.Target{"bob": {Hook: contract.WebhookSettings{URL: okSrv.URL}, Since: since}}, nil)
	if n, ok := pending("alice"); ok {
		t.Errorf("alice no longer run here still reported: %d", n)
	}
}

// TestAnAlertIsGivenUpOnlyOnceTooOld: a receiver that always fails gets
// each alert until it is older than MaxAge; then it is given up with a log
// line and a count, the target shows as failing meanwhile, and the next
// alert is tried.
func TestAnAlertIsGivenUpOnlyOnceTooOld(t *testing.T) {
	f := newFixture(t)
	var mu sync.Mutex
	healthy := false
	r, srv := newReceiver(t, func(int) int {
		mu.Lock()
		defer mu.Unlock()
		if healthy {
			return http.StatusOK
		}
		return http.StatusBadGateway
	})
	opts := f.opts
	opts.MaxAge = 1500 * time.Millisecond
	d := f.deliverer(opts)
	d.Sync(context.Background(), map[string]webhook.Target{"alice": {Hook: contract.WebhookSettings{URL: srv.URL}, Since: time.Now()}}, nil)
	f.record(0, 2, "alice")
	testenv.WaitFor(t, 30*time.Second, "the target failing", func() bool {
		s := d.Status(context.Background())["alice"]
		return s.Failing && s.Attempts >= 2 && strings.Contains(s.LastError, "HTTP 502")
	})
	if n, err := f.read.Sum("vigil.alerts.webhook.failing"); err != nil || n != 1 {
		t.Errorf("vigil.alerts.webhook.failing = %d (%v), want 1", n, err)
	}
	testenv.WaitFor(t, 30*time.Second, "both alerts given up", func() bool {
		n, err := f.read.Sum("vigil.alerts.webhook.failures", attribute.String("reason", webhook.ReasonExpired))
		return err == nil && n == 2
	})
	if lines := strings.Count(f.log.String(), `"msg":"webhook alert given up"`); lines != 2 {
		t.Errorf("%d give-up lines, want 2:\n%s", lines, f.log.String())
	}
	mu.Lock()
	healthy = true
	mu.Unlock()
	want := f.record(5, 6, "alice")
	testenv.WaitFor(t, 30*time.Second, "the next alert delivered", func() bool {
		return slices.Contains(r.ids()["alice"], want["alice"][0])
	})
	testenv.WaitFor(t, 10*time.Second, "the target healthy", func() bool {
		s := d.Status(context.Background())["alice"]
		return !s.Failing && s.GivenUp == 2 && s.Delivered == 1
	})
	if n, err := f.read.Sum("vigil.alerts.webhook.failing"); err != nil || n != 0 {
		t.Errorf("vigil.alerts.webhook.failing = %d (%v), want 0", n, err)
	}
}

// TestSyncFollowsOwnershipAndRemovals: a user let go keeps its consumer
// and backlog; a removed webhook deletes it.
func TestSyncFollowsOwnershipAndRemovals(t *testing.T) {
	f := newFixture(t)
	r, srv := newReceiver(t, nil)
	d := f.deliverer(f.opts)
	ctx := context.Background()
	target := map[string]webhook.Target{"alice": {Hook: contract.WebhookSettings{URL: srv.URL}, Since: time.Now()}}
	d.Sync(ctx, target, nil)
	want := f.record(0, 3, "alice")
	waitDelivered(t, r, want, 30*time.Second)
	d.Sync(ctx, nil, nil) // owned elsewhere now
	if users := d.Users(); len(users) != 0 {
		t.Fatalf("still delivering for %v", users)
	}
	f.record(3, 6, "alice")
	cons, err := f.js.Consumer(ctx, contract.StreamAlerts, webhook.ConsumerName("alice"))
	if err != nil {
		t.Fatal(err)
	}
	if info, err := cons.Info(ctx); err != nil || info.NumPending != 3 {
		t.Fatalf("backlog of a user let go: %+v (%v), want 3 pending", info, err)
	}
	d.Sync(ctx, nil, []string{"alice"}) // the webhook is removed
	if _, err := f.js.Consumer(ctx, contract.StreamAlerts, webhook.ConsumerName("alice")); err == nil {
		t.Fatal("the consumer of a removed webhook still exists")
	}
	if !strings.Contains(f.log.String(), "webhook removed") {
		t.Errorf("no log line for the removed webhook:\n%s", f.log.String())
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	f := newFixture(t)
	for _, opts := range []webhook.Options{
		{Timeout: -time.Second},
		{MaxAge: -time.Second},
		{InitialBackoff: time.Second, MaxBackoff: time.Millisecond},
	} {
		if _, err := webhook.New(f.js, opts); err == nil {
			t.Errorf("New(%+v) accepted", opts)
		}
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
