package service_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/service"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// TestDeclaredVerbsWaitForTheirHandler: a request for a declared verb that
// arrives while the instance is still starting is answered once Handle
// sets the handler; a declared verb that never gets one is answered
// unavailable after the startup wait; $SRV.PING finds the instance from
// Start on.
func TestDeclaredVerbsWaitForTheirHandler(t *testing.T) {
	nc, _ := testenv.Connect(t, testenv.StartNATS(t).URL())
	svc, err := service.Start(nc, service.Config{Svc: contract.SvcFeed, Name: contract.ServiceFeed, Description: "test",
		Instance: "f1", Verbs: []contract.Verb{contract.VerbPause, contract.VerbResume}, StartupWait: 300 * time.Millisecond},
		slog.New(slog.NewTextHandler(io.Discard, nil)), func(context.Context, string) any { return "up" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Shutdown(5 * time.Second) })
	if _, err := nc.Request("$SRV.PING."+contract.ServiceFeed, nil, 2*time.Second); err != nil {
		t.Fatalf("the instance is not found while starting: %v", err)
	}

	request := func(verb contract.Verb) chan contract.SvcReply {
		out := make(chan contract.SvcReply, 1)
		go func() {
			var reply contract.SvcReply
			m, err := nc.Request("vigil.svc.feed."+string(verb), []byte(`{"user":"alice"}`), 5*time.Second)
			if err == nil {
				err = json.Unmarshal(m.Data, &reply)
			}
			if err != nil {
				reply.Error = &contract.Error{Code: contract.CodeInternal, Message: err.Error()}
			}
			out <- reply
		}()
		return out
	}
	early := request(contract.VerbPause)
	select {
	case r := <-early:
		t.Fatalf("a verb without its handler was answered: %+v", r)
	case <-time.After(100 * time.Millisecond):
	}
	if err := svc.Handle(contract.VerbPause, func(_ context.Context, req contract.SvcRequest) (any, error) {
		return map[string]string{"paused": req.User}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if r := <-early; !r.OK || string(r.Result) != `{"paused":"alice"}` {
		t.Fatalf("the early pause got %+v, want ok with the handler's result", r)
	}
	if err := svc.Handle(contract.VerbPause, nil); err == nil {
		t.Fatal("a second handler for pause was accepted")
	}
	if r := <-request(contract.VerbResume); r.OK || r.Error == nil || r.Error.Code != contract.CodeUnavailable {
		t.Fatalf("a verb that never got a handler: %+v, want code unavailable", r)
	}
}

// TestUsersDoNotWaitForEachOther: while a verb is held up for one user,
// the same verb is answered for another user at once; the held-up user's
// further requests wait in order behind it, up to the lane limit, and the
// one beyond is answered busy at once.
func TestUsersDoNotWaitForEachOther(t *testing.T) {
	nc, _ := testenv.Connect(t, testenv.StartNATS(t).URL())
	svc, err := service.Start(nc, service.Config{Svc: contract.SvcIndicators, Name: contract.ServiceIndicators, Description: "test",
		Instance: "i1", Verbs: []contract.Verb{contract.VerbRecompute}, LaneLimit: 1},
		slog.New(slog.NewTextHandler(io.Discard, nil)), func(context.Context, string) any { return "up" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Shutdown(5 * time.Second) })
	release := make(chan struct{})
	started := make(chan string, 4)
	if err := svc.Handle(contract.VerbRecompute, func(_ context.Context, req contract.SvcRequest) (any, error) {
		started <- req.CommandID
		if req.User == "alice" {
			<-release
		}
		return map[string]string{"id": req.CommandID}, nil
	}); err != nil {
		t.Fatal(err)
	}
	// request publishes at once, from the caller's goroutine (so requests
	// arrive in call order), and waits for the reply in the background.
	request := func(user, id string) chan contract.SvcReply {
		t.Helper()
		inbox := nats.NewInbox()
		sub, err := nc.SubscribeSync(inbox)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(contract.SvcRequest{User: user, CommandID: id})
		if err := nc.PublishRequest("vigil.svc.indicators.recompute", inbox, body); err != nil {
			t.Fatal(err)
		}
		out := make(chan contract.SvcReply, 1)
		go func() {
			defer sub.Unsubscribe()
			var reply contract.SvcReply
			m, err := sub.NextMsg(10 * time.Second)
			if err == nil {
				err = json.Unmarshal(m.Data, &reply)
			}
			if err != nil {
				reply.Error = &contract.Error{Code: contract.CodeInternal, Message: err.Error()}
			}
			out <- reply
		}()
		return out
	}
	first := request("alice", "a1")
	if id := <-started; id != "a1" {
		t.Fatalf("started %s, want a1", id)
	}
	second := request("alice", "a2") // waits behind a1
	if r := <-request("alice", "a3"); r.OK || r.Error == nil || r.Error.Code != contract.CodeBusy {
		t.Fatalf("alice's request beyond the lane limit: %+v, want code busy", r)
	}
	if r := <-request("bob", "b1"); !r.OK || string(r.Result) != `{"id":"b1"}` {
		t.Fatalf("bob, while alice's recompute runs: %+v", r)
	}
	if id := <-started; id != "b1" {
		t.Fatalf("started %s, want b1", id)
	}
	close(release)
	for i, c := range []chan contract.SvcReply{first, second} {
		if r := <-c; !r.OK || string(r.Result) != fmt.Sprintf(`{"id":"a%d"}`, i+1) {
			t.Fatalf("alice's request %d: %+v", i+1, r)
		}
	}
}
