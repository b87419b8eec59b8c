package ledger

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

// TestResultIndex: the index knows the results already in VIGIL_RESULTS
// and those published after it opened, per user, with their command's
// acceptance; it answers from memory once it has read as far as asked
// (a result deleted from the stream is still known), and asks the
// stream's leader when asked for more than it has read.
func TestResultIndex(t *testing.T) {
	ctx := context.Background()
	srv := testenv.StartNATS(t)
	_, js := testenv.Connect(t, srv.URL())
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	accepted := time.Date(2026, 12, 4, 3, 0, 0, 0, time.UTC)
	publish := func(user, id string) uint64 {
		msg, err := ResultMsg(Entry{ID: id, User: user, Command: contract.CmdReloadSettings, Digest: "d-" + id, Position: 3, AcceptedAt: accepted})
		if err != nil {
			t.Fatal(err)
		}
		ack, err := js.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	before := publish("alice", "r1")
	if _, err := js.Publish(ctx, contract.ProgressSubject("alice", "r1"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	x, err := OpenResultIndex(ctx, js, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Stop)
	last := publish("alice", "r2")
	testenv.WaitFor(t, 30*time.Second, "the index reads both results", func() bool {
		x.mu.Lock()
		defer x.mu.Unlock()
		return len(x.stored) == 2 && x.caughtUp && x.read == last
	})
	settled := func(user, id string, atLeast uint64) (Recent, bool) {
		r, ok, err := x.Settled(ctx, user, id, atLeast)
		if err != nil {
			t.Fatal(err)
		}
		return r, ok
	}
	for _, id := range []string{"r1", "r2"} {
		r, ok := settled("alice", id, last)
		want := Recent{ID: id, Command: contract.CmdReloadSettings, Digest: "d-" + id, Position: 3, AcceptedAt: accepted}
		if !ok || r != want {
			t.Errorf("alice's %s: %+v %v, want %+v", id, r, ok, want)
		}
	}
	// A result of a vigil before the headers is known, without a digest.
	plain, err := js.Publish(ctx, contract.ResultSubject("alice", "r0"), []byte(`{"id":"r0"}`))
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := settled("alice", "r0", plain.Sequence); !ok || r.Digest != "" {
		t.Errorf("alice's r0 (no headers): %+v %v", r, ok)
	}
	if _, ok := settled("bob", "r1", last); ok {
		t.Error("bob's r1 has a result: ids are per user")
	}
	if _, ok := settled("alice", "r3", last); ok {
		t.Error("alice's r3 has a result")
	}
	stream, err := js.Stream(ctx, contract.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteMsg(ctx, before); err != nil {
		t.Fatal(err)
	}
	if _, ok := settled("alice", "r1", last); !ok {
		t.Error("a result read before it was deleted from the stream is forgotten: the index asked the stream")
	}
	// Asked for more than it read, the index asks the stream: a result
	// it has not read is found, and a deleted one is not.
	x.mu.Lock()
	delete(x.stored, contract.ResultSubject("alice", "r2"))
	x.mu.Unlock()
	if r, ok := settled("alice", "r2", plain.Sequence+1); !ok || r.Digest != "d-r2" || r.Position != 3 {
		t.Errorf("alice's r2 from the stream: %+v %v", r, ok)
	}
	x.mu.Lock()
	delete(x.stored, contract.ResultSubject("alice", "r1"))
	x.mu.Unlock()
	if _, ok := settled("alice", "r1", plain.Sequence+1); ok {
		t.Error("a result deleted from the stream found by the stream")
	}
}
