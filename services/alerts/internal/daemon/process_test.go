package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/alerts/internal/webhook"
)

// hookReceiver counts the alert ids a webhook receiver gets, per user in
// arrival order, and answers 500 while failing is set.
type hookReceiver struct {
	failing  atomic.Bool
	mu       sync.Mutex
	requests int
	ids      map[string][]string
}

func (r *hookReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	var a contract.Alert
	if err := json.Unmarshal(body, &a); err != nil || a.ID != req.Header.Get(webhook.AlertIDHeader) {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.requests++
	if ids := r.ids[a.User]; len(ids) == 0 || ids[len(ids)-1] != a.ID { // a retry of the same alert is folded
		r.ids[a.User] = append(ids, a.ID)
	}
	r.mu.Unlock()
	if r.failing.Load() {
		w.WriteHeader(http.StatusInternalServerError)
	}
}

func (r *hookReceiver) snapshot() (requests int, ids map[string][]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids = map[string][]string{}
	for u, v := range r.ids {
		ids[u] = slices.Clone(v)
	}
	return r.requests, ids
}

// TestWebhooksSurviveAKilledProcess runs the real vigil-alerts binary
// with two users' webhooks at a receiver that answers 500, records a burst
// of 300 alerts, kills the process with SIGKILL while deliveries are
// pending, lets the receiver recover and restarts the process: every alert
// id arrives, in each user's order (a retry or the redelivery of the alert
// that was in hand is folded), and vigilctl alerts --webhooks shows both
// deliveries drained.
func TestWebhooksSurviveAKilledProcess(t *testing.T) {
	stack := testenv.NewStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	js, err := jetstream.New(stack.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	recv := &hookReceiver{ids: map[string][]string{}}
	recv.failing.Store(true)
	srv := httptest.NewServer(recv)
	t.Cleanup(srv.Close)
	users := []string{"alice", "bob"}
	for i, user := range users {
		st := userState(user, int64(i+1), rsiHot)
		st.Settings.Webhook = &contract.WebhookSettings{URL: srv.URL + "/hook"}
		testenv.PutState(t, js, st)
	}
	env := []string{"VIGIL_WEBHOOK_ACK_WAIT=2s", "VIGIL_WEBHOOK_BACKOFF=20ms", "VIGIL_WEBHOOK_MAX_BACKOFF=200ms"}
	first := stack.Start(contract.ServiceAlerts, "alerts-1", env...)
	want := map[string][]string{}
	for i := range 150 {
		for _, user := range users {
			want[user] = append(want[user], publishAlert(ctx, t, js, user, i))
		}
	}
	testenv.WaitFor(t, time.Minute, "failed deliveries to both users", func() bool {
		_, ids := recv.snapshot()
		return len(ids["alice"]) > 0 && len(ids["bob"]) > 0
	})
	first.Kill()
	recv.failing.Store(false)
	stack.Start(contract.ServiceAlerts, "alerts-2", env...)
	var got map[string][]string
	testenv.WaitFor(t, 2*time.Minute, "every alert at the receiver", func() bool {
		_, got = recv.snapshot()
		return len(got["alice"]) >= len(want["alice"]) && len(got["bob"]) >= len(want["bob"])
	})
	for _, user := range users {
		if !slices.Equal(got[user], want[user]) {
			t.Errorf("%s: receiver got %d ids (first %v), want %d in order", user, len(got[user]), got[user][:min(5, len(got[user]))], len(want[user]))
		}
	}
	requests, _ := recv.snapshot()
	t.Logf("%d alerts delivered with %d requests across the kill", 300, requests)
	var hooks []struct {
		User      string `json:"user"`
		Pending   int64  `json:"pending"`
		Delivered int64  `json:"delivered"`
		Failing   bool   `json:"failing"`
	}
	testenv.WaitFor(t, 30*time.Second, "vigilctl alerts --webhooks to show both deliveries drained", func() bool {
		out, err := exec.CommandContext(ctx, stack.Bin("vigilctl"), "alerts", "--webhooks", "--json", "--server", stack.NATSURL).Output()
		if err != nil || json.Unmarshal(out, &hooks) != nil || len(hooks) != 2 {
			return false
		}
		for _, h := range hooks {
			if h.Pending != 0 || h.Failing || h.Delivered == 0 {
				return false
			}
		}
		return true
	})
}

// publishAlert records user's alert number i as vigil-alerts does and
// returns its id.
func publishAlert(ctx context.Context, t *testing.T, js jetstream.JetStream, user string, i int) string {
	t.Helper()
	start := base + int64(i)*60
	a := contract.Alert{ID: contract.AlertID(user, "r1", start), User: user, RuleID: "r1", Kind: contract.RuleThreshold,
		Symbol: "BTC-USD", Timeframe: contract.TF1m, BarStart: start, Message: fmt.Sprintf("alert %d", i), FiredAt: time.Now().UTC()}
	doc, _ := json.Marshal(a)
	msg := nats.NewMsg(contract.AlertIngestSubject(user, "r1"))
	msg.Data = doc
	msg.Header.Set(jetstream.MsgIDHeader, a.ID)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	return a.ID
}
