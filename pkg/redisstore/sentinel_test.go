package redisstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/testenv"
)

// TestSentinelFailoverKeepsVersionedWrites runs the store on a sentinel
// URL, kills the master with SIGKILL, and requires that the client follows
// the promoted replica by itself, that what was replicated before the kill
// is still there, and that the versioned writes keep their rules after the
// failover (a replay of an older version never replaces a newer one).
func TestSentinelFailoverKeepsVersionedWrites(t *testing.T) {
	g := testenv.RedisSentinels(t, 2, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rdb, err := redisstore.NewClient(ctx, g.URL(0))
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	store := redisstore.New(rdb, 0)

	for start := int64(60); start <= 600; start += 60 {
		if ok, err := store.WriteCandle(ctx, candle(start, 2, float64(start))); !ok || err != nil {
			t.Fatalf("write %d: written=%v err=%v", start, ok, err)
		}
	}
	// Both replicas have everything written so far before the master dies.
	if n, err := rdb.Wait(ctx, 2, 10*time.Second).Result(); err != nil || n < 2 {
		t.Fatalf("WAIT 2: %d replicas acknowledged (%v)", n, err)
	}
	oldMaster, err := g.MasterAddr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Server(oldMaster).Kill(); err != nil {
		t.Logf("kill master %s: %v", oldMaster, err)
	}
	killed := time.Now()

	// The client finds the new master by itself; writes succeed again.
	var recovered time.Duration
	testenv.WaitFor(t, 90*time.Second, "a write through the sentinel URL after the master was killed", func() bool {
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
		defer wcancel()
		_, err := store.WriteCandle(wctx, candle(660, 1, 660))
		if err != nil {
			return false
		}
		recovered = time.Since(killed)
		return true
	})
	// The client may have been told of the new master by a sentinel before
	// the one MasterAddr asks first learnt it (they gossip), so wait for it.
	var newMaster string
	testenv.WaitFor(t, 30*time.Second, "the sentinels to name a new master", func() bool {
		newMaster, err = g.MasterAddr(ctx)
		return err == nil && newMaster != oldMaster
	})
	t.Logf("writes succeeded again %s after the master was killed (new master %s)", recovered.Round(time.Millisecond), newMaster)

	got, err := store.Candles(ctx, series, 0, 0)
	if err != nil || len(got) != 11 {
		t.Fatalf("after failover: %d candles (%v), want the 10 replicated before the kill and 1 after", len(got), err)
	}
	for _, c := range got[:10] {
		if c.Version != 2 || c.Close != float64(c.Start) {
			t.Fatalf("after failover: candle %+v differs from what was written", c)
		}
	}
	// A replay of an older version after the failover changes nothing; a
	// newer one replaces.
	if ok, err := store.WriteCandle(ctx, candle(60, 1, 59)); ok || err != nil {
		t.Fatalf("older version after failover: written=%v err=%v", ok, err)
	}
	if ok, err := store.WriteCandle(ctx, candle(60, 3, 61)); !ok || err != nil {
		t.Fatalf("newer version after failover: written=%v err=%v", ok, err)
	}
}

// TestSentinelClientKeepsTheFirstSentinel opens a client on each sentinel
// URL of a group of three, each time with another sentinel listed first:
// the client follows failovers through the first listed (the one on its
// own host, whose death it would not survive anyway), not through
// whichever answered quickest.
func TestSentinelClientKeepsTheFirstSentinel(t *testing.T) {
	g := testenv.RedisSentinels(t, 1, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// subscribers counts the connections subscribed to a channel on the
	// sentinel at addr: the clients following its failover announcements.
	subscribers := func(addr string) int {
		c := redis.NewSentinelClient(&redis.Options{Addr: addr})
		defer c.Close()
		cmd := redis.NewStringCmd(ctx, "client", "list")
		if err := c.Process(ctx, cmd); err != nil {
			t.Fatalf("CLIENT LIST on sentinel %s: %v", addr, err)
		}
		n := 0
		for _, line := range strings.Split(cmd.Val(), "\n") {
			if strings.Contains(line, " sub=") && !strings.Contains(line, " sub=0 ") {
				n++
			}
		}
		return n
	}
	for round := range 2 {
		for first, s := range g.Sentinels {
			before := make([]int, len(g.Sentinels))
			for i, o := range g.Sentinels {
				before[i] = subscribers(o.Addr())
			}
			rdb, err := redisstore.NewClient(ctx, g.URLFrom(first, 0))
			if err != nil {
				t.Fatal(err)
			}
			testenv.WaitFor(t, 30*time.Second, "the client to follow a sentinel", func() bool {
				return subscribers(s.Addr()) > before[first]
			})
			for i, o := range g.Sentinels {
				if n := subscribers(o.Addr()); i != first && n != before[i] {
					t.Errorf("round %d: the client listing sentinel %d first follows sentinel %d too (%d subscribers, %d before)", round, first, i, n, before[i])
				}
			}
			rdb.Close()
		}
	}
}
