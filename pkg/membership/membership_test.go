package membership_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/testenv"
)

func connect(t *testing.T, url string) jetstream.JetStream {
	_, js := testenv.Connect(t, url)
	return js
}

func TestOwnerIsStableAndSpread(t *testing.T) {
	members := []string{"a", "b", "c"}
	counts := map[string]int{}
	for i := range 3000 {
		key := fmt.Sprintf("user-%d", i)
		o := membership.Owner(members, key)
		counts[o]++
		// Removing a member moves only that member's keys.
		if o != "c" && membership.Owner([]string{"a", "b"}, key) != o {
			t.Fatalf("key %s moved from %s though its owner stayed", key, o)
		}
	}
	for _, m := range members {
		if counts[m] < 800 {
			t.Fatalf("uneven spread %v", counts)
		}
	}
	if membership.Owner(nil, "x") != "" {
		t.Fatal("no members, no owner")
	}
}

func TestGroupFailover(t *testing.T) {
	srv := testenv.StartNATS(t)
	ctx := context.Background()
	opts := membership.Options{Interval: 100 * time.Millisecond, Timeout: 500 * time.Millisecond}
	a, err := membership.Join(ctx, connect(t, srv.URL()), "vigil-test", "a", opts)
	if err != nil {
		t.Fatal(err)
	}
	changes := a.Changes()
	b, err := membership.Join(ctx, connect(t, srv.URL()), "vigil-test", "b", opts)
	if err != nil {
		t.Fatal(err)
	}
	jsC := connect(t, srv.URL())
	c, err := membership.Join(ctx, jsC, "vigil-test", "c", opts)
	if err != nil {
		t.Fatal(err)
	}
	all := []string{"a", "b", "c"}
	for _, g := range []*membership.Group{a, b, c} {
		testenv.WaitFor(t, 30*time.Second, g.Self()+" sees all members", func() bool { return slices.Equal(g.Members(), all) })
	}
	select {
	case <-changes:
	default:
		t.Fatal("a was not told about the new members")
	}
	// Every key has exactly one owner, agreed by all.
	for i := range 200 {
		key := fmt.Sprintf("k%d", i)
		owners := 0
		for _, g := range []*membership.Group{a, b, c} {
			if g.Owns(key) {
				owners++
			}
			if g.Owner(key) != a.Owner(key) {
				t.Fatalf("members disagree on %s", key)
			}
		}
		if owners != 1 {
			t.Fatalf("%s has %d owners", key, owners)
		}
	}
	// b leaves cleanly: others drop it at once.
	if err := b.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "b removed", func() bool { return slices.Equal(a.Members(), []string{"a", "c"}) })
	// c dies without leaving (its connection is gone, so are its
	// heartbeats): it drops out after the timeout.
	jsC.Conn().Close()
	testenv.WaitFor(t, 30*time.Second, "dead c dropped", func() bool { return slices.Equal(a.Members(), []string{"a"}) })
	if !a.Owns("anything") {
		t.Fatal("the last member owns every key")
	}
}

func TestGroupOutlivesTheJoinContext(t *testing.T) {
	srv := testenv.StartNATS(t)
	opts := membership.Options{Interval: 100 * time.Millisecond, Timeout: 500 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := membership.Join(ctx, connect(t, srv.URL()), "vigil-test", "a", opts)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	b, err := membership.Join(context.Background(), connect(t, srv.URL()), "vigil-test", "b", opts)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "a to see b after its join context ended", func() bool { return slices.Equal(a.Members(), []string{"a", "b"}) })
	if err := b.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "a to see b leave", func() bool { return slices.Equal(a.Members(), []string{"a"}) })
}

// TestDeadMemberIsNotRevived joins next to the heartbeat of a member that
// died more than a timeout ago. It used a timeout of 1ms to make that beat
// stale at once, and failed 2 of 3 runs on an idle machine: the ghost's
// beat and the joiner's were written within the same millisecond, so the
// ghost counted as live. It now waits until the ghost's beat is stale by
// the server's clock.
func TestDeadMemberIsNotRevived(t *testing.T) {
	srv := testenv.StartNATS(t)
	ctx := context.Background()
	js := connect(t, srv.URL())
	opts := membership.Options{Interval: 100 * time.Millisecond, Timeout: 500 * time.Millisecond}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: membership.Bucket, History: 1, TTL: time.Minute, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	// A heartbeat from a member that died a while ago.
	if _, err := kv.Put(ctx, "vigil-test.ghost", []byte("x")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the ghost's heartbeat to be older than the timeout", func() bool {
		e, err := kv.Get(ctx, "vigil-test.ghost")
		return err == nil && time.Since(e.Created()) > 2*opts.Timeout
	})
	g, err := membership.Join(ctx, js, "vigil-test", "live", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Leave(ctx)
	if m := g.Members(); !slices.Equal(m, []string{"live"}) {
		t.Fatalf("a stale heartbeat counted as live: %v", m)
	}
	// It stays dead while the live member heartbeats on.
	first, err := kv.Get(ctx, "vigil-test.live")
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "three more heartbeats of the live member", func() bool {
		if m := g.Members(); !slices.Equal(m, []string{"live"}) {
			t.Fatalf("the ghost was revived: %v", m)
		}
		e, err := kv.Get(ctx, "vigil-test.live")
		return err == nil && e.Revision() >= first.Revision()+3
	})
	if _, err := membership.Join(ctx, js, "vigil-test", "bad.name", opts); !errors.Is(err, membership.ErrInvalidName) {
		t.Fatalf("a name with a dot must be rejected, got %v", err)
	}
	tight := membership.Options{Interval: time.Second, Timeout: 2 * time.Second}
	if _, err := membership.Join(ctx, js, "vigil-test", "tight", tight); !errors.Is(err, membership.ErrInvalidOptions) {
		t.Fatalf("a timeout under 3 intervals must be rejected, got %v", err)
	}
}

func TestRosterFollowsEveryService(t *testing.T) {
	srv := testenv.StartNATS(t)
	ctx := context.Background()
	opts := membership.Options{Interval: 100 * time.Millisecond, Timeout: 500 * time.Millisecond}
	jsFeed := connect(t, srv.URL())
	if _, err := membership.Join(ctx, jsFeed, "vigil-feed", "f1", opts); err != nil {
		t.Fatal(err)
	}
	alerts, err := membership.Join(ctx, connect(t, srv.URL()), "vigil-alerts", "a1", opts)
	if err != nil {
		t.Fatal(err)
	}
	roster, err := membership.WatchRoster(ctx, connect(t, srv.URL()), opts.Timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer roster.Stop()
	if !slices.Equal(roster.Live("vigil-feed"), []string{"f1"}) || !slices.Equal(roster.Live("vigil-alerts"), []string{"a1"}) {
		t.Fatalf("roster: feed %v alerts %v", roster.Live("vigil-feed"), roster.Live("vigil-alerts"))
	}
	if len(roster.Live("vigil")) != 0 {
		t.Fatal("a service name prefix must not match other services")
	}
	if err := alerts.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "a1 gone", func() bool { return len(roster.Live("vigil-alerts")) == 0 })
	jsFeed.Conn().Close() // f1 dies without leaving
	testenv.WaitFor(t, 30*time.Second, "f1 timed out", func() bool { return len(roster.Live("vigil-feed")) == 0 })
}
