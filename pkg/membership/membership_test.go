package membership_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func connect(t *testing.T, url string) jetstream.JetStream {
	_, js := testenv.Connect(t, url)
	return js
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
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
		waitFor(t, g.Self()+" sees all members", func() bool { return slices.Equal(g.Members(), all) })
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
	waitFor(t, "b removed", func() bool { return slices.Equal(a.Members(), []string{"a", "c"}) })
	// c dies without leaving (its connection is gone, so are its
	// heartbeats): it drops out after the timeout.
	jsC.Conn().Close()
	waitFor(t, "dead c dropped", func() bool { return slices.Equal(a.Members(), []string{"a"}) })
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
	waitFor(t, "a to see b after its join context ended", func() bool { return slices.Equal(a.Members(), []string{"a", "b"}) })
	if err := b.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to see b leave", func() bool { return slices.Equal(a.Members(), []string{"a"}) })
}

func TestDeadMemberIsNotRevived(t *testing.T) {
	srv := testenv.StartNATS(t)
	ctx := context.Background()
	js := connect(t, srv.URL())
	// A timeout of 1ms makes any earlier heartbeat stale without waiting.
	opts := membership.Options{Interval: 100 * time.Millisecond, Timeout: time.Millisecond}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: membership.Bucket, History: 1, TTL: time.Minute, Storage: jetstream.MemoryStorage})
	if err != nil {
		t.Fatal(err)
	}
	// A heartbeat from a member that died a while ago.
	if _, err := kv.Put(ctx, "vigil-test.ghost", []byte("x")); err != nil {
		t.Fatal(err)
	}
	g, err := membership.Join(ctx, js, "vigil-test", "live", opts)
	if err != nil {
		t.Fatal(err)
	}
	if m := g.Members(); !slices.Equal(m, []string{"live"}) {
		t.Fatalf("a stale heartbeat counted as live: %v", m)
	}
	if _, err := membership.Join(ctx, js, "vigil-test", "bad.name", opts); err == nil {
		t.Fatal("a name with a dot must be rejected")
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
	waitFor(t, "a1 gone", func() bool { return len(roster.Live("vigil-alerts")) == 0 })
	jsFeed.Conn().Close() // f1 dies without leaving
	waitFor(t, "f1 timed out", func() bool { return len(roster.Live("vigil-feed")) == 0 })
}
