package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// TestRejections sends requests that must be rejected before anything is
// queued: the ACK says accepted:false with the contract's code and the
// fields at fault, the micro error headers are set, and neither
// command_log, the services nor VIGIL_RESULTS see anything.
func TestRejections(t *testing.T) {
	e := newEnv(t, 1)
	e.startControl("c1", testSettings(), 0)
	tests := []struct {
		name, user, command, body string
		header                    nats.Header
		code                      contract.ErrorCode
		microCode                 string
		fields                    []string
	}{
		{"unknown command", "alice", "explode", "{}", nil, contract.CodeUnknownCommand, "404", nil},
		{"unknown user", "mallory", "pause", "{}", nil, contract.CodeUnknownUser, "404", nil},
		{"bad mode", "alice", "switch-mode", `{"mode":"turbo"}`, nil, contract.CodeInvalidPayload, "400", []string{"mode"}},
		{"missing mode", "alice", "switch-mode", `{}`, nil, contract.CodeInvalidPayload, "400", []string{"mode"}},
		{"bad symbol and timeframe", "alice", "force-backfill", `{"symbol":"btc","timeframes":["2h"]}`, nil,
			contract.CodeInvalidPayload, "400", []string{"symbol", "timeframes[0]"}},
		{"unknown field", "alice", "pause", `{"bogus":1}`, nil, contract.CodeInvalidPayload, "400", []string{"bogus"}},
		{"wrong type", "alice", "resume", `{"symbols":"BTC-USD"}`, nil, contract.CodeInvalidPayload, "400", []string{"symbols"}},
		{"not JSON", "alice", "pause", `{"id":`, nil, contract.CodeInvalidPayload, "400", []string{"payload"}},
		{"trailing data", "alice", "pause", `{} {}`, nil, contract.CodeInvalidPayload, "400", []string{"payload"}},
		{"oversized", "alice", "resume", `{"symbols":["` + strings.Repeat("A", contract.MaxPayloadBytes) + `"]}`, nil,
			contract.CodeInvalidPayload, "400", []string{"payload"}},
		{"bad payload id", "alice", "pause", `{"id":"no spaces allowed"}`, nil, contract.CodeInvalidPayload, "400", []string{"id"}},
		{"bad Nats-Msg-Id", "alice", "pause", `{}`, nats.Header{"Nats-Msg-Id": []string{"a.b"}}, contract.CodeInvalidPayload, "400", []string{"Nats-Msg-Id"}},
		{"ids differ", "alice", "pause", `{"id":"one"}`, nats.Header{"Nats-Msg-Id": []string{"two"}}, contract.CodeInvalidPayload, "400", []string{"id"}},
		{"clear-cache glob", "alice", "clear-cache", `{"scope":"symbol","symbol":"BTC-*"}`, nil, contract.CodeInvalidPayload, "400", []string{"symbol"}},
		{"clear-cache of another user's exchange", "alice", "clear-cache", `{"scope":"all","exchange":` + itoa(e.users["bob"].exchange) + `}`, nil,
			contract.CodeForbidden, "403", []string{"exchange"}},
		{"open backfill range too long", "alice", "force-backfill", `{"symbol":"BTC-USD","from":"2000-01-01T00:00:00Z"}`, nil,
			contract.CodeInvalidPayload, "400", []string{"from"}},
		{"backfill range in the future", "alice", "force-backfill", `{"symbol":"BTC-USD","to":"2999-01-01T00:00:00Z"}`, nil,
			contract.CodeInvalidPayload, "400", []string{"to"}},
		{"key in another case", "alice", "resume", `{"sYmBols":[]}`, nil, contract.CodeInvalidPayload, "400", []string{"sYmBols"}},
		{"duplicate key", "alice", "switch-mode", `{"mode":"scalper-macdv","mode":"position-monitor"}`, nil, contract.CodeInvalidPayload, "400", []string{"mode"}},
		{"zero time", "alice", "force-backfill", `{"symbol":"BTC-USD","from":"0001-01-01T00:00:00Z"}`, nil, contract.CodeInvalidPayload, "400", []string{"from"}},
		{"cancel without id", "alice", "cancel", `{}`, nil, contract.CodeInvalidPayload, "400", []string{"id"}},
		{"cancel with a bad id", "alice", "cancel", `{"id":"a.b"}`, nil, contract.CodeInvalidPayload, "400", []string{"id"}},
		{"cancel with another field", "alice", "cancel", `{"id":"x","symbol":"BTC-USD"}`, nil, contract.CodeInvalidPayload, "400", []string{"symbol"}},
		{"cancel of nothing", "alice", "cancel", `{"id":"never-sent"}`, nil, contract.CodeInvalidPayload, "400", []string{"id"}},
		{"too many symbols", "alice", "resume", `{"symbols":[` + strings.Repeat(`"BTC-USD",`, 60) + `"ETH-USD"]}`, nil,
			contract.CodeInvalidPayload, "400", []string{"symbols"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ack, hdr := e.send(tc.user, tc.command, tc.body, tc.header)
			if ack.Accepted || ack.Error == nil {
				t.Fatalf("accepted: %+v", ack)
			}
			if ack.Error.Code != tc.code {
				t.Errorf("code = %s (%s), want %s", ack.Error.Code, ack.Error.Message, tc.code)
			}
			if ack.User != tc.user || string(ack.Command) != tc.command {
				t.Errorf("ack names %s/%s, want %s/%s", ack.User, ack.Command, tc.user, tc.command)
			}
			var fields []string
			for _, f := range ack.Error.Fields {
				fields = append(fields, f.Field)
			}
			for _, f := range tc.fields {
				if !slices.Contains(fields, f) {
					t.Errorf("fields %v lack %q (%s)", fields, f, ack.Error.Message)
				}
			}
			if got := hdr.Get("Nats-Service-Error-Code"); got != tc.microCode {
				t.Errorf("Nats-Service-Error-Code = %q, want %q", got, tc.microCode)
			}
			if got := hdr.Get("Nats-Service-Error"); !strings.HasPrefix(got, string(tc.code)+": ") {
				t.Errorf("Nats-Service-Error = %q", got)
			}
		})
	}
	if n := e.logCount(); n != 0 {
		t.Errorf("command_log has %d rows after rejections only", n)
	}
	// micro counts a request after its handler returned, which may be after
	// the reply reached us: poll until the last one is counted.
	testenv.WaitFor(t, waitTimeout, fmt.Sprintf("micro's statistics counting %d requests, all errors", len(tests)), func() bool {
		var requests, errs int
		resp, err := e.nc.Request("$SRV.STATS.vigil-control", nil, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var stats micro.Stats
		if err := json.Unmarshal(resp.Data, &stats); err != nil {
			t.Fatal(err)
		}
		for _, ep := range stats.Endpoints {
			if ep.Name == "command" {
				requests, errs = ep.NumRequests, ep.NumErrors
			}
		}
		return requests == len(tests) && errs == len(tests)
	})
	if calls := e.rec.Calls(); len(calls) != 0 {
		t.Errorf("the services got %d calls, first %+v", len(calls), calls[0])
	}
	if n := e.resultCount("alice"); n != 0 {
		t.Errorf("%d results published", n)
	}
}

// TestDuplicateIDs sends the same command id twice, as Nats-Msg-Id and as
// payload id: the second request gets the first ACK and the command runs
// once. The same id for another command is a conflict.
func TestDuplicateIDs(t *testing.T) {
	e := newEnv(t, 3)
	e.startControl("c1", testSettings(), 0)
	tests := []struct {
		name, body string
		header     nats.Header
		id         string
	}{
		{"Nats-Msg-Id", "", nats.Header{"Nats-Msg-Id": []string{"dup-header"}}, "dup-header"},
		{"payload id", `{"id":"dup-payload"}`, nil, "dup-payload"},
		{"both", `{"id":"dup-both"}`, nats.Header{"Nats-Msg-Id": []string{"dup-both"}}, "dup-both"},
	}
	seeded := e.accept("alice", "pause", "")
	e.result("alice", seeded.ID)
	revision := e.state("alice").State.Revision
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			first, _ := e.send("alice", "reload-settings", tc.body, tc.header)
			if !first.Accepted || first.ID != tc.id {
				t.Fatalf("first ack = %+v %+v", first, first.Error)
			}
			r := e.result("alice", tc.id)
			second, _ := e.send("alice", "reload-settings", tc.body, tc.header)
			if second != first {
				t.Errorf("second ack = %+v, want the first %+v", second, first)
			}
			if r.Status != contract.StatusSucceeded {
				t.Fatalf("status %s %+v", r.Status, r.Error)
			}
			revision++
			// Give a wrongly queued second run the chance to show up.
			again, _ := e.send("alice", "reload-settings", "", nil)
			e.result("alice", again.ID)
			revision++
			if n := len(e.rec.For(tc.id)); n != 9 {
				t.Errorf("%d service calls for %s, want 9 (3 steps x 3 instances)", n, tc.id)
			}
			if got := e.state("alice").State.Revision; got != revision {
				t.Errorf("revision = %d, want %d", got, revision)
			}
		})
	}
	t.Run("same id, other command", func(t *testing.T) {
		ack, hdr := e.send("alice", "pause", "", nats.Header{"Nats-Msg-Id": []string{"dup-header"}})
		if ack.Accepted || ack.Error == nil || ack.Error.Code != contract.CodeConflict || hdr.Get("Nats-Service-Error-Code") != "409" {
			t.Errorf("ack = %+v %+v", ack, ack.Error)
		}
	})
	t.Run("same id, other payload", func(t *testing.T) {
		ack, _ := e.send("alice", "switch-mode", `{"id":"dup-mode","mode":"scalper-macdv"}`, nil)
		if !ack.Accepted {
			t.Fatalf("first ack = %+v %+v", ack, ack.Error)
		}
		ack, hdr := e.send("alice", "switch-mode", `{"id":"dup-mode","mode":"position-monitor"}`, nil)
		if ack.Accepted || ack.Error == nil || ack.Error.Code != contract.CodeConflict || hdr.Get("Nats-Service-Error-Code") != "409" {
			t.Errorf("ack = %+v %+v", ack, ack.Error)
		}
		if r := e.result("alice", "dup-mode"); r.Status != contract.StatusSucceeded {
			t.Errorf("first switch-mode: %+v", r)
		}
	})
	t.Run("same id, other user", func(t *testing.T) {
		ack, _ := e.send("bob", "reload-settings", `{"id":"dup-payload"}`, nil)
		if !ack.Accepted || ack.Error != nil || ack.User != "bob" {
			t.Fatalf("bob's own id: ack = %+v %+v", ack, ack.Error)
		}
		if r := e.result("bob", "dup-payload"); r.Status != contract.StatusSucceeded || r.User != "bob" {
			t.Errorf("bob's result: %+v", r)
		}
		again, _ := e.send("alice", "reload-settings", `{"id":"dup-payload"}`, nil)
		if again.User != "alice" || !again.Accepted {
			t.Errorf("alice's id again after bob used it: %+v", again)
		}
	})
	t.Run("operator recorded", func(t *testing.T) {
		// Without auth nobody is authenticated: the operator is local, the
		// headers the client set are a display name and nothing else.
		ack, _ := e.send("alice", "pause", "", nats.Header{"Vigil-Operator": []string{"ops-oncall"},
			"Nats-Request-Info": []string{`{"acc":"BOB","user":"bob"}`}})
		e.result("alice", ack.ID)
		// command_log is a projection of the audit records: wait for it.
		if row := e.publishedRow(ack.ID); row.Operator != "local" || row.OperatorName != "ops-oncall" {
			t.Errorf("operator = %q, operator_name = %q; want local, ops-oncall", row.Operator, row.OperatorName)
		}
	})
	var n int
	testenv.WaitFor(t, waitTimeout, "the audit rows", func() bool {
		err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM command_log WHERE id LIKE 'dup-%' AND finished_at IS NOT NULL`).Scan(&n)
		return err == nil && n == 5
	})
}

// TestRepliesOnlyToTheRequester turns tenant inboxes on: a command of
// alice is answered on alice's own inbox prefix or an operator's, and a
// request whose reply subject is bob's inbox (or any other) gets no
// answer and records nothing.
func TestRepliesOnlyToTheRequester(t *testing.T) {
	e := newEnv(t, 1)
	s := testSettings()
	s.TenantInboxes, s.OperatorInboxes = true, []string{"_INBOX_admin."}
	e.startControl("c1", s, 0)
	conn := func(prefix string) *nats.Conn {
		nc, err := nats.Connect(e.url, nats.CustomInboxPrefix(prefix))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	alice, admin := conn("_INBOX_alice"), conn("_INBOX_admin")
	bobInbox, err := e.nc.SubscribeSync("_INBOX_bob.>")
	if err != nil {
		t.Fatal(err)
	}
	for _, reply := range []string{"_INBOX_bob.x", "_INBOX.x", "vigil.result.alice.x"} {
		if err := alice.PublishRequest("vigil.cmd.alice.pause", reply, []byte(`{"id":"injected"}`)); err != nil {
			t.Fatal(err)
		}
	}
	for name, nc := range map[string]*nats.Conn{"alice": alice, "admin": admin} {
		resp, err := nc.Request("vigil.cmd.alice.clear-cache", []byte(`{"scope":"all"}`), 10*time.Second)
		if err != nil {
			t.Fatalf("%s's own inbox: %v", name, err)
		}
		var ack contract.Ack
		if err := json.Unmarshal(resp.Data, &ack); err != nil || !ack.Accepted {
			t.Fatalf("%s: ack %s (%v)", name, resp.Data, err)
		}
		e.result("alice", ack.ID)
	}
	if _, err := e.nc.Request("vigil.cmd.alice.pause", nil, 2*time.Second); err == nil {
		t.Error("the default _INBOX. prefix was answered although only _INBOX_admin. is an operator's")
	}
	if m, err := bobInbox.NextMsg(0); err == nil {
		t.Errorf("bob's inbox got %s", m.Data)
	}
	if n := e.resultCount("alice"); n != 2 {
		t.Errorf("alice has %d results, want the 2 answered commands only", n)
	}
}
