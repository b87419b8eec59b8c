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
// and those published after it opened, per user, and answers from memory
// once caught up (a result deleted from the stream is still known).
func TestResultIndex(t *testing.T) {
	ctx := context.Background()
	srv := testenv.StartNATS(t)
	_, js := testenv.Connect(t, srv.URL())
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	publish := func(user, id string) uint64 {
		ack, err := js.Publish(ctx, contract.ResultSubject(user, id), []byte(`{}`))
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
	publish("alice", "r2")
	testenv.WaitFor(t, 30*time.Second, "the index reads both results", func() bool {
		x.mu.Lock()
		defer x.mu.Unlock()
		return len(x.stored) == 2 && x.caughtUp
	})
	used := func(user, id string) bool {
		ok, err := x.Used(ctx, user, id)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	for _, id := range []string{"r1", "r2"} {
		if !used("alice", id) {
			t.Errorf("alice's %s: not used", id)
		}
	}
	if used("bob", "r1") || used("alice", "r3") {
		t.Error("an id without a result is used")
	}
	stream, err := js.Stream(ctx, contract.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteMsg(ctx, before); err != nil {
		t.Fatal(err)
	}
	if !used("alice", "r1") {
		t.Error("a result read before it was deleted from the stream is forgotten: the index asked the stream")
	}
}
