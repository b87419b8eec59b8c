//go:build ha

package multihost

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/partition"
	"vigil.dev/pkg/testenv"
)

// natsProcess is a standalone nats-server process with a file store, which
// a test kills with SIGKILL and starts again on the same port and store.
type natsProcess struct {
	t      *testing.T
	server string
	port   int
	store  string
	cmd    *exec.Cmd
	done   chan struct{}
}

// startNATSProcess runs nats-server (JetStream, store in a directory of
// the test) on a free loopback port.
func startNATSProcess(t *testing.T, server string) *natsProcess {
	t.Helper()
	p := &natsProcess{t: t, server: server, port: testenv.FreePort(t), store: t.TempDir()}
	p.start()
	t.Cleanup(func() {
		if p.cmd != nil {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			<-p.done
		}
	})
	return p
}

// URL is the server's client URL.
func (p *natsProcess) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(p.port) }

// start runs the server and waits until it accepts connections.
func (p *natsProcess) start() {
	p.t.Helper()
	cmd := exec.Command(p.server, "-js", "-sd", p.store, "-a", "127.0.0.1", "-p", strconv.Itoa(p.port))
	logFile, err := os.OpenFile(filepath.Join(p.store, "nats.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	done := p.done
	go func() {
		_ = cmd.Wait()
		_ = logFile.Close()
		close(done)
	}()
	testenv.WaitFor(p.t, time.Minute, "nats-server to accept connections", func() bool {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)), time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})
}

// kill ends the server with SIGKILL and waits for it.
func (p *natsProcess) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
	p.cmd = nil
}

// singleHost is the whole system on one host, each dependency a process
// of the test's own that it can kill: nats-server, redis-server (with its
// append-only file, as in production) and PostgreSQL; instances of
// every service; the users of users (webhookUsers with a webhook at the
// test's receiver).
type singleHost struct {
	instances int
	nats      *natsProcess
	redis     *localstack.Redis
	redisDir  string
	redisPort int
	pg        *testenv.PostgresServer
	admin     *nats.Conn
	js        jetstream.JetStream
	hook      *hookReceiver
	obs       *observer
}

// startSingleHost starts the dependencies, instances of each of the four
// services and the observer, and waits until every user has had alerts
// and a succeeded command.
func startSingleHost(t *testing.T, ctx context.Context, instances int) (*singleHost, func()) {
	t.Helper()
	bin := testenv.BuildBinaries(t)
	h := &singleHost{instances: instances, nats: startNATSProcess(t, buildNATSServer(t, bin))}
	h.redisDir = filepath.Join(t.TempDir(), "redis")
	h.startRedis(t, ctx)
	t.Cleanup(func() { _ = h.redis.Stop() })
	h.pg = testenv.StartPostgresServer(t)
	pool, err := db.NewPool(ctx, h.pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	h.hook = startHookReceiver(t, "127.0.0.1:0")
	for _, u := range users {
		if _, _, err := db.NewUsers(pool).SeedUser(ctx, "test", u, settingsOf(u, h.hook.url), "coinbase"); err != nil {
			t.Fatal(err)
		}
	}
	h.admin, err = nats.Connect(h.nats.URL(), nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.admin.Close)
	if h.js, err = jetstream.New(h.admin); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "NATS_URL="+h.nats.URL(), "REDIS_URL="+h.redis.URL(), "DATABASE_URL="+h.pg.URL(),
		"VIGIL_FEED_SOURCE=sim", "VIGIL_LOG_LEVEL=debug", "VIGIL_SHUTDOWN_TIMEOUT=5s",
		"VIGIL_WEBHOOK_ACK_WAIT=5s", "VIGIL_WEBHOOK_BACKOFF=50ms", "VIGIL_WEBHOOK_MAX_BACKOFF=1s")
	for _, svc := range services {
		for i := 1; i <= instances; i++ {
			instance := fmt.Sprintf("s-%s-%d", strings.TrimPrefix(svc.binary, "vigil-"), i)
			testenv.StartService(t, h.admin, localstack.ServiceOptions{
				Binary: filepath.Join(bin, svc.binary), Service: svc.binary, Instance: instance, Env: env,
				LogPath: filepath.Join(t.TempDir(), instance+".log"), RegisterTimeout: time.Minute,
			})
		}
	}
	h.obs = newObserver(t, h.admin, users)
	start := time.Now()
	h.obs.waitRecovered(start, 3*time.Minute, "start")
	t.Logf("every user had alerts and a succeeded command %v after the services started", time.Since(start).Round(100*time.Millisecond))
	verify := func() { verifyNothingLostOrDoubled(ctx, t, h.js, pool, h.obs, h.hook) }
	return h, verify
}

// startRedis runs redis-server on h.redisPort (a free one the first time)
// with its append-only file in h.redisDir.
func (h *singleHost) startRedis(t *testing.T, ctx context.Context) {
	t.Helper()
	r, err := localstack.StartRedis(ctx, localstack.Options{Dir: h.redisDir, Port: h.redisPort, Persist: true})
	if err != nil {
		t.Fatal(err)
	}
	h.redis, h.redisPort = r, r.Port()
}

// outage kills a dependency with kill, waits until every user's commands
// have had three rounds against the dead dependency, restarts it with
// restart and waits for the system to recover, logging how long that took.
// With servesWhileDown, every user's commands and alerts must come back
// while the dependency is still down.
func (h *singleHost) outage(t *testing.T, what string, servesWhileDown bool, kill, restart func()) {
	t.Helper()
	before := h.obs.tries()
	kill()
	killed := time.Now()
	h.obs.waitTries(before, 3)
	if servesWhileDown {
		r := h.obs.waitRecovered(killed, recoveryBound, what+" killed")
		t.Logf("with %s down, every user's commands and alerts came: %s after the kill", what, r)
	}
	restart()
	restarted := time.Now()
	r := h.obs.waitRecovered(restarted, recoveryBound, what+" restarted")
	t.Logf("%s down %v; every user's commands and alerts back after the restart: %s", what, restarted.Sub(killed).Round(100*time.Millisecond), r)
}

// TestNATSRestart kills the standalone NATS server (file store) with
// SIGKILL under two running instances of every service and starts it
// again: every instance reconnects by itself, the membership and lease
// buckets are there again, the instances share the work once more (both
// members seen by each, every partition and user owned once), commands
// and alerts come back, and nothing acked is lost, doubled or run twice.
func TestNATSRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h, verify := startSingleHost(t, ctx, 2)
	h.checkShared(t, ctx, "before the kill")
	h.candlePublishes(t, publishWindow) // the start-up gap fills
	before := h.candlePublishes(t, publishWindow)
	h.outage(t, "NATS", false, h.nats.kill, h.nats.start)
	h.checkShared(t, ctx, "after the restart")
	after := h.candlePublishes(t, publishWindow)
	t.Logf("1m candle publishes over %v: %d before the kill, %d after the restart (%d and %d versions published twice)",
		publishWindow, before.oneMinute, after.oneMinute, before.twice, after.twice)
	// Two feeds owning a user would publish each of its series twice:
	// the same versions (seen twice by a core subscriber although the
	// stream drops the second) or twice the updates.
	if after.twice > 0 || before.twice > 0 {
		t.Errorf("candle versions published twice: %d before the kill, %d after the restart", before.twice, after.twice)
	}
	if float64(after.oneMinute) > 1.5*float64(before.oneMinute) {
		t.Errorf("1m candle publishes went from %d to %d per %v after the restart: more than one feed publishes a series",
			before.oneMinute, after.oneMinute, publishWindow)
	}
	verify()
}

// publishWindow is how long candlePublishes listens.
const publishWindow = 10 * time.Second

// publishes counts what a core subscriber of every candle subject saw.
type publishes struct {
	// oneMinute is the number of 1m candle messages.
	oneMinute int
	// twice is the number of candle versions (Nats-Msg-Id) seen more than
	// once.
	twice int
}

// candlePublishes subscribes to vigil.candle.> (core NATS, as an operator's
// nats sub does) for window and counts the 1m candle messages and the
// versions that came more than once.
func (h *singleHost) candlePublishes(t *testing.T, window time.Duration) publishes {
	t.Helper()
	seen := map[string]int{}
	var p publishes
	msgs := make(chan *nats.Msg, 65536)
	sub, err := h.admin.ChanSubscribe(contract.CandleSubjects, msgs)
	if err != nil {
		t.Fatal(err)
	}
	end := time.After(window)
	for done := false; !done; {
		select {
		case m := <-msgs:
			if strings.HasSuffix(m.Subject, "."+string(contract.TF1m)) {
				p.oneMinute++
			}
			if id := m.Header.Get(nats.MsgIdHdr); id != "" {
				if seen[id]++; seen[id] == 2 {
					p.twice++
				}
			}
		case <-end:
			done = true
		}
	}
	if dropped, err := sub.Dropped(); err != nil || dropped > 0 {
		t.Fatalf("the candle subscriber dropped %d messages (%v)", dropped, err)
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkShared waits until the instances share the work: the membership
// and lease buckets exist, each instance of each service sees all its
// service's instances as members, the partitions of indicators and of
// alerts are owned once each (disjoint and complete), and each user is
// owned by exactly one feed instance. It logs the shares.
func (h *singleHost) checkShared(t *testing.T, ctx context.Context, when string) {
	t.Helper()
	var problem string
	began := time.Now()
	t.Cleanup(func() {
		if t.Failed() && problem != "" {
			t.Logf("work not shared %s: %s", when, problem)
		}
	})
	testenv.WaitFor(t, 2*time.Minute, "the instances to share the work "+when, func() bool {
		problem = h.sharingProblem(ctx)
		return problem == ""
	})
	t.Logf("work shared by %d instances of each service %s (%s)", h.instances, when, time.Since(began).Round(100*time.Millisecond))
}

// sharingProblem is what keeps the instances from sharing the work, or "".
func (h *singleHost) sharingProblem(ctx context.Context) string {
	for _, bucket := range []string{membership.Bucket, partition.LeaseBucket} {
		if _, err := h.js.KeyValue(ctx, bucket); err != nil {
			return fmt.Sprintf("bucket %s: %v", bucket, err)
		}
	}
	for _, svc := range []contract.Svc{contract.SvcFeed, contract.SvcIndicators, contract.SvcAlerts, contract.SvcControl} {
		replies, err := testenv.CallVerb(h.admin, svc, contract.VerbStatus, nil, h.instances, 5*time.Second)
		if err != nil {
			return err.Error()
		}
		if len(replies) != h.instances {
			return fmt.Sprintf("%d %s instances answered status, want %d", len(replies), svc, h.instances)
		}
		partitions := map[int]string{}
		feedOwners := map[string][]string{}
		for _, r := range replies {
			var st struct {
				Members    []string                   `json:"members"`
				Partitions []int                      `json:"partitions"`
				Users      map[string]json.RawMessage `json:"users"`
			}
			if err := json.Unmarshal(r.Result, &st); err != nil {
				return fmt.Sprintf("%s status of %s: %v", svc, r.Instance, err)
			}
			if len(st.Members) != h.instances {
				return fmt.Sprintf("%s %s sees members %v, want %d", svc, r.Instance, st.Members, h.instances)
			}
			for _, p := range st.Partitions {
				if other, ok := partitions[p]; ok {
					return fmt.Sprintf("%s partition %d owned by %s and %s", svc, p, other, r.Instance)
				}
				partitions[p] = r.Instance
			}
			for user, raw := range st.Users {
				var u struct {
					Owner bool `json:"owner"`
				}
				if json.Unmarshal(raw, &u) == nil && u.Owner {
					feedOwners[user] = append(feedOwners[user], r.Instance)
				}
			}
		}
		switch svc {
		case contract.SvcIndicators, contract.SvcAlerts:
			if len(partitions) != defaultPartitions {
				return fmt.Sprintf("%s instances own %d partitions, want all %d", svc, len(partitions), defaultPartitions)
			}
		case contract.SvcFeed:
			for _, user := range users {
				if len(feedOwners[user]) != 1 {
					return fmt.Sprintf("user %s is owned by feed instances %v, want exactly one", user, feedOwners[user])
				}
			}
		}
	}
	return ""
}

// defaultPartitions is VIGIL_PARTITIONS' default, which the test keeps.
const defaultPartitions = 64

// TestRedisRestart kills redis-server (append-only file on) with SIGKILL
// under the running services and starts it again on its port and data.
func TestRedisRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h, verify := startSingleHost(t, ctx, 1)
	h.outage(t, "Redis", false, func() {
		if err := h.redis.Kill(); err != nil {
			t.Fatal(err)
		}
	}, func() { h.startRedis(t, ctx) })
	verify()
}

// TestPostgresRestart kills PostgreSQL (the postmaster and every backend)
// with SIGKILL under the running services, keeps it down while commands
// are accepted and succeed, and starts it again: command_log and
// alert_events catch up with everything exactly once.
func TestPostgresRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h, verify := startSingleHost(t, ctx, 1)
	h.outage(t, "PostgreSQL", true, h.pg.Kill, h.pg.Start)
	verify()
}
