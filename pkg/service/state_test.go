package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/service"
	"vigil.dev/pkg/testenv"
)

// seenStates records what FollowStates hands over: each user's last state
// (nil once deleted).
type seenStates struct {
	mu    sync.Mutex
	users map[string]*contract.DesiredState
}

func (s *seenStates) apply(_ context.Context, us service.UserState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if us.Deleted {
		s.users[us.User] = nil
		return
	}
	st := us.State
	s.users[us.User] = &st
}

// mode is the mode user was last handed over with, "deleted" or "unseen".
func (s *seenStates) mode(user string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.users[user]
	switch {
	case !ok:
		return "unseen"
	case st == nil:
		return "deleted"
	}
	return string(st.Mode)
}

// TestFollowStates: the current states are handed over before FollowStates
// returns (an invalid one skipped), then every change; after the bucket is
// deleted and created again, the follower replays the new bucket's states
// and reports the users that vanished as deleted.
func TestFollowStates(t *testing.T) {
	ctx := context.Background()
	_, js := testenv.Connect(t, testenv.StartNATS(t).URL())
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	put := func(key string, st contract.DesiredState) {
		t.Helper()
		kv, err := js.KeyValue(ctx, contract.BucketState)
		if err != nil {
			t.Fatal(err)
		}
		doc, _ := json.Marshal(st)
		if _, err := kv.Put(ctx, key, doc); err != nil {
			t.Fatal(err)
		}
	}
	state := func(user string, mode contract.Mode) contract.DesiredState {
		return contract.DesiredState{User: user, UserID: 1, ExchangeID: 2, Mode: mode}
	}
	put(contract.StateKey("alice"), state("alice", contract.ModePositionMonitor))
	put(contract.StateKey("bob"), state("carol", contract.ModePositionMonitor)) // names another user
	put(contract.StateKey("dave"), contract.DesiredState{User: "dave"})         // no user or exchange id

	seen := &seenStates{users: map[string]*contract.DesiredState{}}
	bg, stop := context.WithCancel(ctx)
	follower, err := service.FollowStates(ctx, bg, js, slog.New(slog.NewTextHandler(io.Discard, nil)), seen.apply)
	if err != nil {
		t.Fatal(err)
	}
	for user, want := range map[string]string{"alice": "position-monitor", "bob": "unseen", "dave": "unseen"} {
		if got := seen.mode(user); got != want {
			t.Errorf("after the first read %s is %s, want %s", user, got, want)
		}
	}

	put(contract.StateKey("erin"), state("erin", contract.ModeScalperMACDV))
	put(contract.StateKey("alice"), state("alice", contract.ModeScalperOrderbook))
	testenv.WaitFor(t, 10*time.Second, "the changes handed over", func() bool {
		return seen.mode("erin") == "scalper-macdv" && seen.mode("alice") == "scalper-orderbook"
	})

	// The bucket is lost and created again holding only frank.
	if err := js.DeleteKeyValue(ctx, contract.BucketState); err != nil {
		t.Fatal(err)
	}
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	put(contract.StateKey("frank"), state("frank", contract.ModePositionMonitor))
	testenv.WaitFor(t, 20*time.Second, "the new bucket followed", func() bool {
		return seen.mode("frank") == "position-monitor" && seen.mode("alice") == "deleted" && seen.mode("erin") == "deleted"
	})
	put(contract.StateKey("alice"), state("alice", contract.ModeScalperMACDV))
	testenv.WaitFor(t, 10*time.Second, "a change in the new bucket", func() bool { return seen.mode("alice") == "scalper-macdv" })

	stop()
	select {
	case <-follower.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the follower did not stop when its context ended")
	}
}

// TestFollowStatesNeedsTheBucket: without VIGIL_STATE FollowStates fails
// naming it.
func TestFollowStatesNeedsTheBucket(t *testing.T) {
	_, js := testenv.Connect(t, testenv.StartNATS(t).URL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := service.FollowStates(ctx, ctx, js, slog.New(slog.NewTextHandler(io.Discard, nil)), func(context.Context, service.UserState) {})
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("err = %v, want bucket not found", err)
	}
}

// TestFollowStatesDoesNotSerialiseUsers: one user's slow apply does not
// delay another user's: while slow's first state is still being applied,
// fast's states are applied; slow's states are applied one at a time and
// in order, a newer one replacing the one that waited, so the last one
// applied is the newest.
func TestFollowStatesDoesNotSerialiseUsers(t *testing.T) {
	ctx := context.Background()
	_, js := testenv.Connect(t, testenv.StartNATS(t).URL())
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		t.Fatal(err)
	}
	put := func(user string, mode contract.Mode) {
		t.Helper()
		doc, _ := json.Marshal(contract.DesiredState{User: user, UserID: 1, ExchangeID: 2, Mode: mode})
		if _, err := kv.Put(ctx, contract.StateKey(user), doc); err != nil {
			t.Fatal(err)
		}
	}
	release := make(chan struct{})
	var mu sync.Mutex
	var slowApplied []contract.Mode
	slowRunning := 0
	seen := &seenStates{users: map[string]*contract.DesiredState{}}
	apply := func(ctx context.Context, us service.UserState) {
		if us.User == "slow" {
			mu.Lock()
			slowRunning++
			if slowRunning > 1 {
				t.Errorf("two of slow's states applied at once")
			}
			first := len(slowApplied) == 0
			mu.Unlock()
			if first {
				<-release
			}
			mu.Lock()
			slowApplied = append(slowApplied, us.State.Mode)
			slowRunning--
			mu.Unlock()
		}
		seen.apply(ctx, us)
	}
	bg, stop := context.WithCancel(ctx)
	follower, err := service.FollowStates(ctx, bg, js, slog.New(slog.NewTextHandler(io.Discard, nil)), apply)
	if err != nil {
		t.Fatal(err)
	}
	put("slow", contract.ModePositionMonitor)
	put("slow", contract.ModeScalperMACDV)
	put("fast", contract.ModePositionMonitor)
	put("slow", contract.ModeScalperOrderbook)
	put("fast", contract.ModeScalperMACDV)
	testenv.WaitFor(t, 10*time.Second, "fast's states applied while slow's first waits", func() bool {
		return seen.mode("fast") == "scalper-macdv"
	})
	if got := seen.mode("slow"); got != "unseen" {
		t.Fatalf("slow is %s while its first apply is blocked", got)
	}
	close(release)
	testenv.WaitFor(t, 10*time.Second, "slow's newest state applied", func() bool {
		return seen.mode("slow") == "scalper-orderbook"
	})
	mu.Lock()
	got := slices.Clone(slowApplied)
	mu.Unlock()
	if got[0] != contract.ModePositionMonitor || got[len(got)-1] != contract.ModeScalperOrderbook || len(got) > 3 {
		t.Fatalf("slow's states applied %v: want position-monitor first, scalper-orderbook last, none twice", got)
	}
	stop()
	select {
	case <-follower.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the follower did not stop when its context ended")
	}
}
