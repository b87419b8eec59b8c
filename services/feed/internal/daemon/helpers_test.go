package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/feed/internal/daemon"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// stack is one test's NATS server, Redis database and client connections.
type stack struct {
	natsURL  string
	redisURL string
	nc       *nats.Conn
	js       jetstream.JetStream
	store    *redisstore.Store
	rdb      *redis.Client
}

// newStack starts a NATS server of the test's own (so KV state and streams
// do not leak between tests) and takes a fresh Redis database.
func newStack(t *testing.T, retention int) *stack {
	t.Helper()
	srv := testenv.StartNATS(t)
	s := &stack{natsURL: srv.URL(), redisURL: testenv.Redis(t)}
	var err error
	if s.nc, err = nats.Connect(s.natsURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.nc.Close)
	if s.js, err = jetstream.New(s.nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := natsx.EnsureStreams(ctx, s.js); err != nil {
		t.Fatal(err)
	}
	if s.rdb, err = redisstore.NewClient(ctx, s.redisURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.rdb.Close() })
	s.store = redisstore.New(s.rdb, retention)
	return s
}

// instance is one running vigil-feed.
type instance struct {
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// stop cancels the instance and waits for Serve to return.
func (i *instance) stop(t *testing.T) {
	t.Helper()
	i.once.Do(func() {
		i.cancel()
		began := time.Now()
		select {
		case i.err = <-i.done:
			t.Logf("feed Serve returned %v after cancel", time.Since(began).Round(time.Millisecond))
		case <-time.After(30 * time.Second):
			var stacks strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			i.err = fmt.Errorf("Serve did not return within 30s of cancel; goroutines:\n%s", stacks.String())
		}
	})
	if i.err != nil {
		t.Errorf("feed Serve: %v", i.err)
	}
}

// startFeed runs one feed instance on the stack, configured by env (the
// variables that differ from their defaults); it is stopped at cleanup.
// Logs go to the test log when VIGIL_TEST_LOG is set.
func startFeed(t *testing.T, s *stack, env map[string]string) *instance {
	t.Helper()
	var out io.Writer = io.Discard
	if os.Getenv("VIGIL_TEST_LOG") != "" {
		out = testWriter{t}
	}
	return startFeedLogging(t, s, env, out)
}

// startFeedLogging is startFeed with the instance's log going to out.
func startFeedLogging(t *testing.T, s *stack, env map[string]string, out io.Writer) *instance {
	t.Helper()
	cfg := s.config(t, env)
	ctx, cancel := context.WithCancel(context.Background())
	inst := &instance{cancel: cancel, done: make(chan error, 1)}
	go func() { inst.done <- daemon.Serve(ctx, cfg, out) }()
	t.Cleanup(func() { inst.stop(t) })
	return inst
}

// config is the configuration of a feed instance on the stack: the
// defaults, with the variables of env set.
func (s *stack) config(t *testing.T, env map[string]string) daemon.Config {
	t.Helper()
	environ := map[string]string{"NATS_URL": s.natsURL, "REDIS_URL": s.redisURL}
	maps.Copy(environ, env)
	var cfg daemon.Config
	if err := config.Parse(&cfg, environ); err != nil {
		t.Fatal(err)
	}
	return cfg
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// putState writes a user's desired state to KV VIGIL_STATE.
func (s *stack) putState(t *testing.T, st contract.DesiredState) {
	t.Helper()
	testenv.PutState(t, s.js, st)
}

// call sends a vigil.svc.feed.<verb> request and collects want replies.
func (s *stack) call(t *testing.T, verb contract.Verb, req contract.SvcRequest, want int, timeout time.Duration) []contract.SvcReply {
	t.Helper()
	replies, err := s.tryCall(verb, req, want, timeout)
	if err != nil {
		t.Fatalf("%s: %v (got %d replies: %+v)", verb, err, len(replies), replies)
	}
	return replies
}

// tryCall is call returning an error when fewer than want instances
// answer within timeout.
func (s *stack) tryCall(verb contract.Verb, req contract.SvcRequest, want int, timeout time.Duration) ([]contract.SvcReply, error) {
	return testenv.Verb(s.nc, contract.SvcFeed, verb, req, want, timeout)
}

// ownerReply picks the one reply whose result says owner:true.
func ownerReply(t *testing.T, replies []contract.SvcReply) (contract.SvcReply, map[string]json.RawMessage) {
	t.Helper()
	var found []contract.SvcReply
	var result map[string]json.RawMessage
	for _, r := range replies {
		if !r.OK {
			t.Fatalf("reply from %s failed: %+v", r.Instance, r.Error)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(r.Result, &m); err != nil {
			t.Fatalf("result %s: %v", r.Result, err)
		}
		if string(m["owner"]) == "true" {
			found = append(found, r)
			result = m
		} else if string(m["owner"]) != "false" {
			t.Fatalf("reply from %s has no owner field: %s", r.Instance, r.Result)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d owners answered, want exactly 1: %+v", len(found), replies)
	}
	return found[0], result
}

// statusView is the part of the status result the tests read.
type statusView struct {
	Members []string `json:"members"`
	Users   map[string]struct {
		Owner      bool     `json:"owner"`
		Active     bool     `json:"active"`
		Paused     bool     `json:"paused"`
		Subscribed []string `json:"subscribed"`
		Book       bool     `json:"book"`
		Jobs       int      `json:"jobs"`
	} `json:"users"`
	Products map[string]struct {
		Subscribers int  `json:"subscribers"`
		Book        bool `json:"book"`
	} `json:"products"`
	Engine struct {
		Malformed, Late, CandlesWritten, WriteErrors, GapFills, GapFillErrors, Reconciles uint64
		LastGapFill, MaxGapFill                                                           time.Duration
	} `json:"engine"`
	SourceStatus json.RawMessage `json:"source_status"`
}

// statuses asks every instance for its status, by instance id.
func (s *stack) statuses(t *testing.T, instances int) map[string]statusView {
	t.Helper()
	out, err := s.tryStatuses(instances, 10*time.Second)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return out
}

// tryStatuses is statuses that reports failure instead of failing.
func (s *stack) tryStatuses(instances int, timeout time.Duration) (map[string]statusView, error) {
	raw, err := testenv.Statuses[json.RawMessage](s.nc, contract.SvcFeed, instances, timeout)
	if err != nil {
		return nil, err
	}
	out := map[string]statusView{}
	for id, result := range raw {
		var v statusView
		if err := json.Unmarshal(result, &v); err != nil {
			return nil, fmt.Errorf("status %s: %w", result, err)
		}
		// Every field the feed sends is one of contract.FeedStatus.
		if _, err := contract.DecodeStrict[contract.FeedStatus](result); err != nil {
			return nil, fmt.Errorf("status %s is not a contract.FeedStatus: %w", result, err)
		}
		out[id] = v
	}
	return out, nil
}

// series reads a stored series and checks it has no duplicate bar start.
func (s *stack) series(t *testing.T, id contract.SeriesID) []contract.Candle {
	t.Helper()
	ctx := context.Background()
	members, err := s.rdb.ZRangeWithScores(ctx, contract.CandleKey(id), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]contract.Candle, 0, len(members))
	for _, m := range members {
		var c contract.Candle
		if err := json.Unmarshal([]byte(m.Member.(string)), &c); err != nil {
			t.Fatal(err)
		}
		if float64(c.Start) != m.Score {
			t.Fatalf("%s: member start %d has score %v", id, c.Start, m.Score)
		}
		if n := len(out); n > 0 && out[n-1].Start == c.Start {
			t.Fatalf("%s: bar %d stored twice", id, c.Start)
		}
		out = append(out, c)
	}
	return out
}

// contiguous reports the first missing bar start in cs, or 0.
func contiguous(cs []contract.Candle) int64 {
	for i := 1; i < len(cs); i++ {
		step := int64(cs[i].Timeframe.Duration() / time.Second)
		if cs[i].Start != cs[i-1].Start+step {
			return cs[i-1].Start + step
		}
	}
	return 0
}

// candleLog records every candle published on vigil.candle.> (core
// subscription on the stream's subjects).
type candleLog struct {
	mu  sync.Mutex
	all []contract.Candle
}

func (s *stack) recordCandles(t *testing.T) *candleLog {
	t.Helper()
	l := &candleLog{}
	sub, err := s.nc.Subscribe(contract.CandleSubjects, func(m *nats.Msg) {
		var c contract.Candle
		if err := json.Unmarshal(m.Data, &c); err != nil {
			return
		}
		l.mu.Lock()
		l.all = append(l.all, c)
		l.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := s.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

// maxVersions is the highest published version of each bar of series.
func (l *candleLog) maxVersions(id contract.SeriesID) map[int64]contract.Candle {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[int64]contract.Candle{}
	for _, c := range l.all {
		if c.SeriesID == id && c.Version > out[c.Start].Version {
			out[c.Start] = c
		}
	}
	return out
}

// checkNewestKept checks that every stored bar is the newest version
// published for it, so no older version replaced a newer one. published
// must be taken before stored was read.
func checkNewestKept(t *testing.T, stored []contract.Candle, published map[int64]contract.Candle) {
	t.Helper()
	for _, c := range stored {
		p, ok := published[c.Start]
		if !ok {
			continue // written before the recorder subscribed
		}
		if c.Version < p.Version {
			t.Errorf("%s bar %d: stored version %d is older than published %d", c.SeriesID, c.Start, c.Version, p.Version)
		}
		if c.Version == p.Version && c != p {
			t.Errorf("%s bar %d: stored %+v differs from published %+v of the same version", c.SeriesID, c.Start, c, p)
		}
	}
}
