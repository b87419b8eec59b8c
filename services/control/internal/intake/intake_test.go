package intake_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/directory"
	"vigil.dev/services/control/internal/intake"
	"vigil.dev/services/control/internal/ledger"
)

// TestAcceptsRecordsThenNotifies: a valid command is recorded in the
// ledger before its ACK, the ACK carries its id and position, and the
// user's executor is woken.
func TestAcceptsRecordsThenNotifies(t *testing.T) {
	h := newHarness(t, intake.Config{})
	ack, _ := h.send(t, "alice", "pause", `{}`, nil)
	if !ack.Accepted || ack.ID == "" || ack.User != "alice" || ack.Command != contract.CmdPause {
		t.Fatalf("ack %+v", ack)
	}
	q := h.ledger.Queue("alice")
	if len(q.Items) != 1 || q.Items[0].ID != ack.ID || q.Items[0].UserID != 7 || q.Items[0].Operator != intake.LocalIdentity {
		t.Errorf("queue %+v, want the pause of user 7 recorded by a local operator", q.Items)
	}
	testenv.WaitFor(t, 10*time.Second, "alice's executor to be woken", func() bool { return slices.Contains(h.notified(), "alice") })
}

// TestRejectionsNameTheProblemAndRecordNothing: each bad request is
// answered accepted:false with the contract's code (and the micro error
// headers), names the field, records nothing and wakes nobody.
func TestRejectionsNameTheProblemAndRecordNothing(t *testing.T) {
	h := newHarness(t, intake.Config{})
	for _, c := range []struct {
		name, user, cmd, body string
		header                nats.Header
		code                  contract.ErrorCode
		names                 string
	}{
		{"unknown mode", "alice", "switch-mode", `{"mode":"turbo"}`, nil, contract.CodeInvalidPayload, "mode"},
		{"unknown field", "alice", "pause", `{"paused":true}`, nil, contract.CodeInvalidPayload, "paused"},
		{"unknown command", "alice", "explode", `{}`, nil, contract.CodeUnknownCommand, "explode"},
		{"unknown user", "mallory", "pause", `{}`, nil, contract.CodeUnknownUser, "mallory"},
		{"ids differ", "alice", "pause", `{"id":"op-1"}`, nats.Header{intake.MsgIDHeader: {"op-2"}}, contract.CodeInvalidPayload, "id"},
		{"bad header id", "alice", "pause", `{}`, nats.Header{intake.MsgIDHeader: {"has space"}}, contract.CodeInvalidPayload, intake.MsgIDHeader},
		{"not the user's exchange", "alice", "clear-cache", `{"scope":"all","exchange":99}`, nil, contract.CodeForbidden, "99"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ack, msg := h.send(t, c.user, c.cmd, c.body, c.header)
			if ack.Accepted || ack.Error == nil || ack.Error.Code != c.code || !strings.Contains(ack.Error.Message, c.names) {
				t.Fatalf("ack %+v (error %+v), want %s naming %q", ack, ack.Error, c.code, c.names)
			}
			if got, want := msg.Header.Get(micro.ErrorCodeHeader), c.code.ServiceCode(); got != want {
				t.Errorf("%s = %q, want %q", micro.ErrorCodeHeader, got, want)
			}
		})
	}
	if q := h.ledger.Queue("alice"); len(q.Items) != 0 {
		t.Errorf("rejected requests were recorded: %+v", q.Items)
	}
	if n := h.notified(); len(n) != 0 {
		t.Errorf("rejected requests woke executors: %v", n)
	}
}

// TestSameIDReturnsTheFirstACK: a request sent again with the same id
// gets the first ACK and is recorded once.
func TestSameIDReturnsTheFirstACK(t *testing.T) {
	h := newHarness(t, intake.Config{})
	id := nats.Header{intake.MsgIDHeader: {"op-42"}}
	first, _ := h.send(t, "alice", "reload-settings", `{}`, id)
	again, _ := h.send(t, "alice", "reload-settings", `{}`, id)
	if !first.Accepted || first.ID != "op-42" || again.ID != first.ID || again.Position != first.Position || !again.Accepted {
		t.Fatalf("first %+v, again %+v", first, again)
	}
	if q := h.ledger.Queue("alice"); len(q.Items) != 1 {
		t.Errorf("queue %+v, want the command once", q.Items)
	}
}

// TestCommandsPerMinute: beyond the limit a command is refused busy
// naming the limit; pause is exempt.
func TestCommandsPerMinute(t *testing.T) {
	now := time.Date(2026, 12, 3, 5, 0, 0, 0, time.UTC)
	h := newHarness(t, intake.Config{CommandsPerMinute: 2, Now: func() time.Time { return now }})
	for i := range 2 {
		if ack, _ := h.send(t, "alice", "clear-cache", fmt.Sprintf(`{"scope":"all","id":"cc-%d"}`, i), nil); !ack.Accepted {
			t.Fatalf("clear-cache %d: %+v", i, ack.Error)
		}
	}
	ack, _ := h.send(t, "alice", "clear-cache", `{"scope":"all","id":"cc-3"}`, nil)
	if ack.Accepted || ack.Error.Code != contract.CodeBusy || !strings.Contains(ack.Error.Message, intake.CommandsPerMinuteLimit) {
		t.Fatalf("third clear-cache: %+v %+v, want busy naming %s", ack, ack.Error, intake.CommandsPerMinuteLimit)
	}
	if ack, _ := h.send(t, "alice", "pause", `{}`, nil); !ack.Accepted {
		t.Errorf("pause over the limit: %+v", ack.Error)
	}
}

// TestTenantInboxes: with tenant inboxes on, a command of alice's is
// answered on her own inbox prefix and not on a plain inbox (which anyone
// could read), and nothing is recorded for the unanswered one.
func TestTenantInboxes(t *testing.T) {
	h := newHarness(t, intake.Config{TenantInboxes: true})
	own, err := nats.Connect(h.url, nats.CustomInboxPrefix(strings.TrimSuffix(intake.TenantInboxPrefix("alice"), ".")))
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if _, err := h.nc.Request(contract.CommandSubject("alice", contract.CmdPause), []byte(`{}`), 500*time.Millisecond); err == nil {
		t.Fatal("a command from a plain inbox was answered")
	}
	msg, err := own.Request(contract.CommandSubject("alice", contract.CmdPause), []byte(`{}`), 10*time.Second)
	if err != nil {
		t.Fatalf("from alice's own inbox: %v", err)
	}
	var ack contract.Ack
	if err := json.Unmarshal(msg.Data, &ack); err != nil || !ack.Accepted {
		t.Fatalf("ack %s (%v)", msg.Data, err)
	}
	if q := h.ledger.Queue("alice"); len(q.Items) != 1 || q.Items[0].ID != ack.ID {
		t.Errorf("queue %+v, want only the answered pause", q.Items)
	}
}

// harness is an intake serving vigil.cmd.*.* on a real NATS server, with
// a real ledger, one user (alice, id 7, exchange 1) and a notifier that
// records whom it woke.
type harness struct {
	url    string
	nc     *nats.Conn
	ledger *ledger.Ledger
	mu     sync.Mutex
	woken  []string
}

func newHarness(t *testing.T, cfg intake.Config) *harness {
	t.Helper()
	url := testenv.StartNATS(t).URL()
	nc, js := testenv.Connect(t, url)
	ctx := context.Background()
	if err := natsx.EnsureControl(ctx, js); err != nil {
		t.Fatal(err)
	}
	h := &harness{url: url, nc: nc}
	var err error
	if h.ledger, err = ledger.Open(ctx, js, ledger.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.ledger.Stop)
	cfg.Limits, cfg.QueueLimit = contract.DefaultLimits, 16
	in, err := intake.New(cfg, h.ledger, users{}, h, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := micro.AddService(nc, micro.Config{Name: "vigil-control-test", Version: "0.0.1",
		Endpoint: &micro.EndpointConfig{Subject: contract.CommandSubjects, Handler: in}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	return h
}

// send requests cmd of user and decodes the ACK.
func (h *harness) send(t *testing.T, user, cmd, body string, header nats.Header) (contract.Ack, *nats.Msg) {
	t.Helper()
	msg, err := h.nc.RequestMsg(&nats.Msg{Subject: "vigil.cmd." + user + "." + cmd, Data: []byte(body), Header: header}, 10*time.Second)
	if err != nil {
		t.Fatalf("%s %s: %v", user, cmd, err)
	}
	var ack contract.Ack
	if err := json.Unmarshal(msg.Data, &ack); err != nil {
		t.Fatalf("ack %s: %v", msg.Data, err)
	}
	return ack, msg
}

// Notify records that user's executor was woken.
func (h *harness) Notify(user string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.woken = append(h.woken, user)
}

func (h *harness) notified() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.woken)
}

// users is a directory of one user, alice.
type users struct{}

func (users) Lookup(_ context.Context, token string) (directory.User, error) {
	if token != "alice" {
		return directory.User{}, fmt.Errorf("%w: %q", contract.ErrUnknownUser, token)
	}
	return directory.User{ID: 7, Token: "alice", Exchanges: []int64{1}}, nil
}
