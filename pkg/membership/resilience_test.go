package membership_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

// resilient are the options of the failure tests: a timeout long enough
// for a loaded 2-core machine, short enough to keep the tests quick.
var resilient = membership.Options{Interval: 250 * time.Millisecond, Timeout: 1500 * time.Millisecond}

// member is one joined instance and its own connection.
type member struct {
	*membership.Group
	nc *nats.Conn
}

// joinAll joins one instance per name, each on a connection of its own
// to url made as the services make theirs (natsx.Connect: reconnect
// forever).
func joinAll(t *testing.T, url string, names ...string) []member {
	t.Helper()
	return joinReplicated(t, url, 1, names...)
}

// joinReplicated is joinAll with the bucket replicated replicas times.
func joinReplicated(t *testing.T, url string, replicas int, names ...string) []member {
	t.Helper()
	var out []member
	for _, name := range names {
		nc := dial(t, url, name)
		js := natsx.WithReplicas(mustJS(t, nc), replicas)
		opts := resilient
		if os.Getenv("MEMBERS_DEBUG") != "" {
			opts.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("m", name)
		}
		g, err := membership.Join(context.Background(), js, "vigil-test", name, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = g.Leave(context.Background()) })
		out = append(out, member{g, nc})
	}
	return out
}

func dial(t *testing.T, url, name string) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := natsx.Connect(ctx, config.NATS{URL: url}, name, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func mustJS(t *testing.T, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// ownershipKeys are the keys whose owners the tests check.
var ownershipKeys = func() []string {
	keys := make([]string, 300)
	for i := range keys {
		keys[i] = fmt.Sprintf("user-%d", i)
	}
	return keys
}()

// converged is nil when every one of members counts itself live, all see
// exactly the members want, and every key has exactly one owner, the
// same in every member's view.
func converged(members []member, want []string) error {
	for _, m := range members {
		if got := m.Members(); !slices.Equal(got, want) {
			return fmt.Errorf("%s sees %v, want %v", m.Self(), got, want)
		}
	}
	for _, key := range ownershipKeys {
		owners := 0
		for _, m := range members {
			if m.Owns(key) {
				owners++
			}
			if m.Owner(key) != members[0].Owner(key) {
				return fmt.Errorf("%s and %s disagree on the owner of %s", m.Self(), members[0].Self(), key)
			}
		}
		if owners != 1 {
			return fmt.Errorf("%s has %d owners", key, owners)
		}
	}
	return nil
}

// waitConverged waits until converged holds and returns how long it took.
func waitConverged(t *testing.T, members []member, want []string) time.Duration {
	t.Helper()
	start := time.Now()
	testenv.Eventually(t, 30*time.Second, func() error {
		if err := converged(members, want); err != nil {
			return fmt.Errorf("ownership did not converge: %w", err)
		}
		return nil
	})
	return time.Since(start)
}

// requireStable checks that, once two heartbeat timeouts have passed since
// the event (the window in which the contract lets ownership settle, and
// one view may still flap, e.g. a member whose own beats have not come back
// through its new watch yet), converged holds and keeps holding over the
// next heartbeats of members[0].
func requireStable(t *testing.T, js jetstream.JetStream, members []member, want []string, event time.Time) {
	t.Helper()
	ctx := context.Background()
	testenv.WaitFor(t, 30*time.Second, "two heartbeat timeouts after the event", func() bool { return time.Since(event) >= 2*resilient.Timeout })
	if err := converged(members, want); err != nil {
		t.Fatalf("ownership not converged two heartbeat timeouts after the event: %v", err)
	}
	revision := func() uint64 {
		kv, err := js.KeyValue(ctx, membership.Bucket)
		if err != nil {
			return 0
		}
		e, err := kv.Get(ctx, "vigil-test."+members[0].Self())
		if err != nil {
			return 0
		}
		return e.Revision()
	}
	first := revision()
	testenv.WaitFor(t, 30*time.Second, "four more heartbeats while ownership holds", func() bool {
		if err := converged(members, want); err != nil {
			t.Fatalf("ownership split again after converging: %v", err)
		}
		return revision() >= first+4*uint64(len(members))
	})
}

func requireWithinTwoTimeouts(t *testing.T, what string, took time.Duration) {
	t.Helper()
	t.Logf("%s: every key had exactly one owner again after %s", what, took.Round(time.Millisecond))
	if took > 2*resilient.Timeout {
		t.Fatalf("%s: converged after %s, more than two heartbeat timeouts (%s)", what, took, 2*resilient.Timeout)
	}
}

// TestOwnershipSurvivesANATSRestart kills (SIGKILL) a standalone
// nats-server process with a file store under three members and starts it
// again on the same port and store, then once more with its store lost
// (the bucket must be created again). While the server is away nobody can
// heartbeat, so nobody owns anything; within two heartbeat timeouts of
// every member being reconnected, every key has exactly one owner in every
// member's view.
func TestOwnershipSurvivesANATSRestart(t *testing.T) {
	for _, storeLost := range []bool{false, true} {
		t.Run(fmt.Sprintf("killed -9, store lost %v", storeLost), func(t *testing.T) {
			dir := t.TempDir()
			port := testenv.FreePort(t)
			srv := startNATSProcess(t, dir, port)
			names := []string{"a", "b", "c"}
			members := joinAll(t, srv.URL(), names...)
			waitConverged(t, members, names)
			info, err := mustJS(t, members[0].nc).Stream(context.Background(), "KV_"+membership.Bucket)
			if err != nil {
				t.Fatal(err)
			}
			if info.CachedInfo().Config.Storage != jetstream.FileStorage {
				t.Fatal("the members bucket is not file-backed")
			}

			srv.kill()
			if storeLost {
				if err := os.RemoveAll(filepath.Join(dir, "jetstream")); err != nil {
					t.Fatal(err)
				}
			}
			testenv.WaitFor(t, 30*time.Second, "every member to stop owning while NATS is away", func() bool {
				for _, m := range members {
					if m.Live() || slices.Contains(m.Members(), m.Self()) || slices.ContainsFunc(ownershipKeys, m.Owns) {
						return false
					}
				}
				return true
			})
			startNATSProcess(t, dir, port)
			testenv.WaitFor(t, 30*time.Second, "every member to reconnect", func() bool {
				for _, m := range members {
					if !m.nc.IsConnected() {
						return false
					}
				}
				return true
			})
			took := waitConverged(t, members, names)
			requireWithinTwoTimeouts(t, "NATS restart", took)
			requireStable(t, mustJS(t, members[0].nc), members, names, time.Now().Add(-took))
		})
	}
}

// TestBucketDeletedOrPurgedWhileMembersRun deletes, then purges, the
// members bucket under three running members: it comes back and every
// key again has exactly one owner within two heartbeat timeouts.
func TestBucketDeletedOrPurgedWhileMembersRun(t *testing.T) {
	srv := testenv.StartNATS(t)
	ctx := context.Background()
	names := []string{"a", "b", "c"}
	members := joinAll(t, srv.URL(), names...)
	js := connect(t, srv.URL())
	waitConverged(t, members, names)

	if err := js.DeleteKeyValue(ctx, membership.Bucket); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	testenv.WaitFor(t, 30*time.Second, "the bucket to be created again", func() bool {
		_, err := js.KeyValue(ctx, membership.Bucket)
		return err == nil
	})
	waitConverged(t, members, names)
	requireWithinTwoTimeouts(t, "bucket deleted", time.Since(deleted))
	requireStable(t, js, members, names, deleted)

	s, err := js.Stream(ctx, "KV_"+membership.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	purged := time.Now()
	waitConverged(t, members, names)
	requireWithinTwoTimeouts(t, "bucket purged", time.Since(purged))
	requireStable(t, js, members, names, purged)
}

// TestCutOffMemberStopsOwningBeforeOthersTakeOver cuts one of three
// members off the network (its connection goes silent, as in a
// partition): it stops counting itself live before the others count it
// dead, so no key ever has two owners; when the network is back it
// rejoins and ownership converges within two heartbeat timeouts.
func TestCutOffMemberStopsOwningBeforeOthersTakeOver(t *testing.T) {
	srv := testenv.StartNATS(t)
	proxy := testenv.StartProxy(t, srv.Addr().String())
	all := []string{"a", "b", "c"}
	members := joinAll(t, srv.URL(), "a", "b")
	members = append(members, joinAll(t, proxy.URL(), "c")...)
	cut := members[2]
	waitConverged(t, members, all)

	proxy.Cut()
	cutAt := time.Now()
	var selfDropped time.Duration
	testenv.WaitFor(t, 30*time.Second, "a and b to count c dead", func() bool {
		aSeesC := slices.Contains(members[0].Members(), "c")
		bSeesC := slices.Contains(members[1].Members(), "c")
		cLive := cut.Live()
		if !cLive && selfDropped == 0 {
			selfDropped = time.Since(cutAt)
		}
		if cLive && (!aSeesC || !bSeesC) {
			t.Fatalf("c still counts itself live, but a (%v) or b (%v) took its keys", aSeesC, bSeesC)
		}
		return !aSeesC && !bSeesC
	})
	t.Logf("cut off: c stopped owning after %s, the others took over after %s", selfDropped.Round(time.Millisecond), time.Since(cutAt).Round(time.Millisecond))
	for _, key := range ownershipKeys {
		if cut.Owns(key) {
			t.Fatalf("the cut-off member still owns %s", key)
		}
	}
	waitConverged(t, members[:2], []string{"a", "b"})

	reconnects := cut.nc.Stats().Reconnects
	proxy.Restore()
	testenv.WaitFor(t, 30*time.Second, "c to reconnect", func() bool { return cut.nc.Stats().Reconnects > reconnects && cut.nc.IsConnected() })
	requireWithinTwoTimeouts(t, "network back", waitConverged(t, members, all))
}

// TestOwnershipSurvivesALeaderElection runs three members on a cluster of
// three servers with the bucket replicated three times (as with
// VIGIL_STREAM_REPLICAS=3): every key has exactly one owner again within
// two heartbeat timeouts of a new leader being elected after the bucket's
// leader stepped down, and after the server leading it died (its members
// reconnect to the others). A server shut down closes its routes, so the
// election is quick; a silent death is TestSurvivorsKeepOwningWhileTheBucketElects.
func TestOwnershipSurvivesALeaderElection(t *testing.T) {
	cluster := testenv.StartNATSCluster(t, 3)
	names := []string{"a", "b", "c"}
	members := joinReplicated(t, cluster.URL(), 3, names...)
	nc := dial(t, cluster.URL(), "observer")
	js := mustJS(t, nc)
	ctx := context.Background()
	waitConverged(t, members, names)
	leader := func() string {
		s, err := js.Stream(ctx, "KV_"+membership.Bucket)
		if err != nil || s.CachedInfo().Cluster == nil {
			return ""
		}
		if n := s.CachedInfo().Config.Replicas; n != 3 {
			t.Fatalf("the members bucket has %d replicas, want 3", n)
		}
		return s.CachedInfo().Cluster.Leader
	}
	var first string
	testenv.WaitFor(t, 30*time.Second, "the bucket to have a leader", func() bool { first = leader(); return first != "" })

	if _, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN.KV_"+membership.Bucket, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "another leader", func() bool { l := leader(); return l != "" && l != first })
	elected := time.Now()
	waitConverged(t, members, names)
	requireWithinTwoTimeouts(t, "leader stepped down (from the new leader's election)", time.Since(elected))
	requireStable(t, js, members, names, elected)

	var dead string
	testenv.WaitFor(t, 30*time.Second, "the bucket to have a leader", func() bool { dead = leader(); return dead != "" })
	cluster.Server(dead).Shutdown()
	testenv.WaitFor(t, 30*time.Second, "every member to be connected to a live server", func() bool {
		for _, m := range append(members, member{nc: nc}) {
			if !m.nc.IsConnected() || m.nc.ConnectedServerName() == dead {
				return false
			}
		}
		return true
	})
	testenv.WaitFor(t, 30*time.Second, "a new leader", func() bool { l := leader(); return l != "" && l != dead })
	elected = time.Now()
	waitConverged(t, members, names)
	requireWithinTwoTimeouts(t, "leader's server died (from reconnection and the new leader's election)", time.Since(elected))
	requireStable(t, js, members, names, elected)
}

// hosts is three members, each connected through a proxy of its own to a
// server of its own of a cluster whose routes can be cut, with the bucket
// replicated three times, and converged.
type hosts struct {
	cluster *testenv.Cluster
	members []member
	clients []*testenv.Proxy // clients[i] carries members[i]'s connection
}

func startHosts(t *testing.T) hosts {
	t.Helper()
	h := hosts{cluster: testenv.StartPartitionableNATSCluster(t, 3)}
	for i, name := range []string{"a", "b", "c"} {
		proxy := testenv.StartProxy(t, strings.TrimPrefix(h.cluster.Servers[i].ClientURL(), "nats://"))
		h.clients = append(h.clients, proxy)
		h.members = append(h.members, joinReplicated(t, proxy.URL(), 3, name)...)
	}
	waitConverged(t, h.members, []string{"a", "b", "c"})
	return h
}

// bucketLeader is the index of the server leading the bucket, asked
// through the server of members[asker] with a short timeout (a question
// during an election is not answered, and the tests' checks must go on
// meanwhile); -1 when there is none or no answer.
func (h hosts) bucketLeader(t *testing.T, asker int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	s, err := mustJS(t, h.members[asker].nc).Stream(ctx, "KV_"+membership.Bucket)
	if err != nil || s.CachedInfo().Cluster == nil {
		return -1
	}
	for i, srv := range h.cluster.Servers {
		if srv.Name() == s.CachedInfo().Cluster.Leader {
			return i
		}
	}
	return -1
}

// TestSurvivorsKeepOwningWhileTheBucketElects kills a host: the server
// leading the bucket and the member on it go silent at once (routes and
// connection cut, nothing closed, as when a host dies). The bucket elects
// a new leader only once the others miss its server's heartbeats
// (seconds); meanwhile the two survivors hear each other's heartbeats on
// core NATS, so neither stops owning for a moment, and the dead member's
// keys move to them Timeout after its last beat, before the election
// ends.
func TestSurvivorsKeepOwningWhileTheBucketElects(t *testing.T) {
	h := startHosts(t)
	dead := -1
	testenv.WaitFor(t, 30*time.Second, "the bucket to have a leader", func() bool { dead = h.bucketLeader(t, 0); return dead >= 0 })
	var survivors []member
	for i, m := range h.members {
		if i != dead {
			survivors = append(survivors, m)
		}
	}
	want := []string{survivors[0].Self(), survivors[1].Self()}
	asker := (dead + 1) % 3

	h.clients[dead].Cut()
	h.members[dead].nc.Close() // its process is gone: no goodbye reaches the server
	h.cluster.Isolate(h.cluster.Servers[dead].Name())
	killed := time.Now()
	var tookOver, elected time.Duration
	testenv.WaitFor(t, 60*time.Second, "the survivors to take the dead member's keys and the bucket to have a new leader", func() bool {
		for _, m := range survivors {
			if !m.Live() {
				t.Fatalf("%s stopped owning %s after the kill", m.Self(), time.Since(killed).Round(time.Millisecond))
			}
		}
		if tookOver == 0 && converged(survivors, want) == nil {
			tookOver = time.Since(killed)
		}
		if l := h.bucketLeader(t, asker); elected == 0 && l >= 0 && l != dead {
			elected = time.Since(killed)
		}
		return tookOver > 0 && elected > 0
	})
	t.Logf("host of the bucket's leader killed: the survivors owned the dead member's keys after %s, the bucket had a new leader after %s",
		tookOver.Round(time.Millisecond), elected.Round(time.Millisecond))
	if tookOver > 2*resilient.Timeout {
		t.Fatalf("the dead member's keys moved after %s, more than two heartbeat timeouts (%s)", tookOver, 2*resilient.Timeout)
	}
	requireStable(t, mustJS(t, survivors[0].nc), survivors, want, killed)
}

// TestIsolatedMemberStopsOwningBeforeTheMajorityTakesOver cuts the server
// leading the bucket off the other two servers while its member stays
// connected to it: that member still hears its own heartbeats on core
// NATS, but not the majority's, so it stops owning before the other two
// (live on each other's heartbeats until the bucket has a new leader)
// take its keys, and it does not count itself live again while it is
// cut off, even once it has forgotten the others.
func TestIsolatedMemberStopsOwningBeforeTheMajorityTakesOver(t *testing.T) {
	h := startHosts(t)
	cut := -1
	testenv.WaitFor(t, 30*time.Second, "the bucket to have a leader", func() bool { cut = h.bucketLeader(t, 0); return cut >= 0 })
	isolated := h.members[cut]
	var majority []member
	for i, m := range h.members {
		if i != cut {
			majority = append(majority, m)
		}
	}

	h.cluster.Isolate(h.cluster.Servers[cut].Name())
	cutAt := time.Now()
	var selfDropped, tookOver time.Duration
	check := func() {
		// The majority's views are read first: a member that counts
		// itself live after one of them took its keys owns them twice.
		var took []string
		for _, m := range majority {
			if !m.Live() {
				t.Fatalf("%s (majority) stopped owning %s after the cut", m.Self(), time.Since(cutAt).Round(time.Millisecond))
			}
			if !slices.Contains(m.Members(), isolated.Self()) {
				took = append(took, m.Self())
			}
		}
		live := isolated.Live()
		if !live && selfDropped == 0 {
			selfDropped = time.Since(cutAt)
		}
		if live && len(took) > 0 {
			t.Fatalf("%s still counts itself live %s after the cut, but %v took its keys", isolated.Self(), time.Since(cutAt).Round(time.Millisecond), took)
		}
		if live && selfDropped > 0 {
			t.Fatalf("%s counts itself live again %s after the cut, while cut off", isolated.Self(), time.Since(cutAt).Round(time.Millisecond))
		}
	}
	testenv.WaitFor(t, 60*time.Second, "the majority to take the isolated member's keys", func() bool {
		check()
		if tookOver == 0 && converged(majority, []string{majority[0].Self(), majority[1].Self()}) == nil {
			tookOver = time.Since(cutAt)
		}
		return tookOver > 0
	})
	t.Logf("cut off: %s stopped owning after %s, the majority took over after %s",
		isolated.Self(), selfDropped.Round(time.Millisecond), tookOver.Round(time.Millisecond))
	// Long enough for the isolated member to forget the others.
	testenv.WaitFor(t, 60*time.Second, "three heartbeat timeouts more", func() bool {
		check()
		return time.Since(cutAt) > tookOver+3*resilient.Timeout
	})
	for _, key := range ownershipKeys {
		if isolated.Owns(key) {
			t.Fatalf("the isolated member owns %s", key)
		}
	}
}
