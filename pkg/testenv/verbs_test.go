package testenv_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// answer makes instance answer every vigil.svc.feed.<verb> request with
// reply (its Instance set) and records the users it was asked about.
func answer(t *testing.T, nc *nats.Conn, instance string, reply contract.SvcReply, users chan<- string) {
	t.Helper()
	reply.Instance = instance
	data, err := json.Marshal(reply)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := nc.Subscribe(contract.SvcSubject(contract.SvcFeed, "*"), func(m *nats.Msg) {
		var req contract.SvcRequest
		if json.Unmarshal(m.Data, &req) == nil {
			users <- req.User
		}
		_ = m.Respond(data)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
}

func TestVerbCollectsEveryInstancesReply(t *testing.T) {
	nc, err := nats.Connect(testenv.NATS(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	users := make(chan string, 16)
	answer(t, nc, "f1", contract.SvcReply{OK: true, Result: json.RawMessage(`{"owner":true}`)}, users)
	answer(t, nc, "f2", contract.SvcReply{Error: &contract.Error{Code: contract.CodeInternal, Message: "broken"}}, users)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	replies, err := testenv.Verb(nc, contract.SvcFeed, contract.VerbPause, contract.SvcRequest{User: "alice"}, 2, 30*time.Second)
	if err != nil || len(replies) != 2 {
		t.Fatalf("Verb: %d replies, %v; want 2", len(replies), err)
	}
	if got := <-users; got != "alice" {
		t.Errorf("the instances were asked about %q, want alice", got)
	}
	if err := replies.AllOK(); err == nil || !strings.Contains(err.Error(), "f2") || !strings.Contains(err.Error(), "broken") {
		t.Errorf("AllOK: %v, want f2's error", err)
	}
	if err := replies[:0].Answered(1); err == nil {
		t.Error("Answered(1) of no replies is no error")
	}

	replies, err = testenv.Verb(nc, contract.SvcFeed, contract.VerbPause, contract.SvcRequest{User: "alice"}, 3, 200*time.Millisecond)
	if err == nil || len(replies) != 2 || !strings.Contains(err.Error(), "feed.pause: 2 of 3 instances answered") {
		t.Errorf("Verb with a third instance missing: %d replies, %v; want the two and an error", len(replies), err)
	}

	sent, err := testenv.SendVerb(nc, contract.SvcFeed, contract.VerbResume, []byte(`{"user":"bob"}`))
	if err != nil {
		t.Fatal(err)
	}
	if replies := sent.Collect(2, 30*time.Second); len(replies) != 2 || replies.Answered(2) != nil {
		t.Errorf("SendVerb then Collect: %+v, want two replies", replies)
	}
}
