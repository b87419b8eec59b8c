package testenv

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"vigil.dev/pkg/localstack"
)

// SentinelGroup is a Redis master with replicas watched by Redis
// Sentinels, started by RedisSentinels for one test.
type SentinelGroup struct {
	// MasterName is the name the sentinels know the master by.
	MasterName string
	// Servers are the master (first, at start) and its replicas.
	Servers []*localstack.Redis
	// Sentinels watch the servers and elect a new master.
	Sentinels []*localstack.Sentinel
}

// RedisSentinels starts a Redis master, replicas replicas of it and
// sentinels sentinels (quorum: a majority) that consider a master down
// after one second, waits until every sentinel knows every replica, and
// stops them all when the test ends.
func RedisSentinels(t testing.TB, replicas, sentinels int) *SentinelGroup {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	g := &SentinelGroup{MasterName: "vigil"}
	start := func(name string, opts localstack.Options) *localstack.Redis {
		opts.Dir = filepath.Join(dir, name)
		r, err := localstack.StartRedis(ctx, opts)
		if err != nil {
			t.Fatalf("testenv: start Redis %s: %v", name, err)
		}
		t.Cleanup(func() { _ = r.Stop() })
		g.Servers = append(g.Servers, r)
		return r
	}
	master := start("master", localstack.Options{})
	for i := range replicas {
		start("replica"+strconv.Itoa(i+1), localstack.Options{RedisReplicaOf: master.Addr()})
	}
	for i := range sentinels {
		s, err := localstack.StartSentinel(ctx, localstack.Options{Dir: filepath.Join(dir, "sentinel"+strconv.Itoa(i+1))},
			localstack.SentinelOptions{MasterName: g.MasterName, MasterAddr: master.Addr(), Quorum: sentinels/2 + 1})
		if err != nil {
			t.Fatalf("testenv: start sentinel %d: %v", i+1, err)
		}
		t.Cleanup(func() { _ = s.Stop() })
		g.Sentinels = append(g.Sentinels, s)
	}
	WaitFor(t, time.Minute, "every sentinel to know every replica and sentinel", func() bool {
		for _, s := range g.Sentinels {
			c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr()})
			reps, err1 := c.Replicas(ctx, g.MasterName).Result()
			sens, err2 := c.Sentinels(ctx, g.MasterName).Result()
			c.Close()
			if err1 != nil || err2 != nil || len(reps) < replicas || len(sens) < sentinels-1 {
				return false
			}
		}
		return true
	})
	return g
}

// URL is the failover URL of the group (database db) that
// redisstore.NewClient takes as REDIS_URL.
func (g *SentinelGroup) URL(db int) string { return g.URLFrom(0, db) }

// URLFrom is URL with sentinel first (an index of Sentinels) listed first,
// as a host lists its own sentinel.
func (g *SentinelGroup) URLFrom(first, db int) string {
	q := url.Values{"master_name": {g.MasterName}}
	for i, s := range g.Sentinels {
		if i != first {
			q.Add("addr", s.Addr())
		}
	}
	return fmt.Sprintf("redis://%s/%d?%s", g.Sentinels[first].Addr(), db, q.Encode())
}

// MasterAddr is the master's address as the first sentinel that answers
// reports it.
func (g *SentinelGroup) MasterAddr(ctx context.Context) (string, error) {
	var errs []string
	for _, s := range g.Sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr()})
		addr, err := c.GetMasterAddrByName(ctx, g.MasterName).Result()
		c.Close()
		if err == nil && len(addr) == 2 {
			return addr[0] + ":" + addr[1], nil
		}
		errs = append(errs, fmt.Sprint(err))
	}
	return "", fmt.Errorf("no sentinel knows master %s: %s", g.MasterName, strings.Join(errs, "; "))
}

// Server returns the group's server listening on addr, or nil.
func (g *SentinelGroup) Server(addr string) *localstack.Redis {
	for _, r := range g.Servers {
		if r.Addr() == addr {
			return r
		}
	}
	return nil
}
