//go:build ha

package multihost

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

// Ports of Redis and its sentinel on every host.
const (
	redisPort    = 6379
	sentinelPort = 26379
	masterName   = "vigil"
)

// alertsAfterAHostBound bounds the recovery of alerts after a host died
// (commands keep recoveryBound). Measured 43-70 s when the host held the
// Redis master: a user's new alerts owner catches up from Redis, and that
// read waited ~25 s for its deadline after the failover (docs/deploy.md).
const alertsAfterAHostBound = 90 * time.Second

// hostProcess is a process running in a host's network namespace.
type hostProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startOnHost runs bin with args in namespace ns, its output in logPath.
func startOnHost(t *testing.T, ns, logPath string, env []string, bin string, args ...string) *hostProcess {
	t.Helper()
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &hostProcess{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		_ = logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// relay forwards connections from a gateway address to a loopback target
// (PostgreSQL listens on loopback only); cut drops the listener and every
// connection, as the death of the target's host does, and open listens
// again on the same address.
type relay struct {
	t      *testing.T
	addr   string
	target string

	mu    sync.Mutex
	l     net.Listener
	conns map[net.Conn]bool
}

func newRelay(t *testing.T, gateway, target string) *relay {
	r := &relay{t: t, addr: net.JoinHostPort(gateway, "0"), target: target}
	r.open()
	r.addr = r.l.Addr().String()
	t.Cleanup(r.cut)
	return r
}

func (r *relay) open() {
	r.t.Helper()
	l, err := net.Listen("tcp", r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.l, r.conns = l, map[net.Conn]bool{}
	r.mu.Unlock()
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", r.target)
			if err != nil {
				_ = in.Close()
				continue
			}
			r.mu.Lock()
			r.conns[in], r.conns[out] = true, true
			r.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); _ = out.Close() }()
			go func() { _, _ = io.Copy(in, out); _ = in.Close() }()
		}
	}()
}

func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.l != nil {
		_ = r.l.Close()
		r.l = nil
	}
	for c := range r.conns {
		_ = c.Close()
	}
	r.conns = map[net.Conn]bool{}
}

// cluster is the three hosts of the kill rotation: on each a NATS node, a
// Redis server (host 1 the master at start) with a sentinel, and one
// instance of every service; PostgreSQL belongs to host 1 (it runs beside
// the hosts on loopback, reached through a relay on the bridge, and dies
// and comes back with host 1).
type cluster struct {
	t      *testing.T
	n      network
	server string // nats-server
	bin    string // vigil binaries
	redis  string // redis-server
	dir    map[int]string
	env    []string
	admin  *nats.Conn
	pg     *testenv.PostgresServer
	pgLink *relay
	nodes  map[int]*natsNode
	procs  map[int][]*localstack.ServiceProcess
}

// sentinelURL is REDIS_URL in go-redis's failover form, host i's sentinel
// first, with the settings docs/deploy.md recommends for HA: 1 s socket
// timeouts (a pooled connection to a master whose host died fails in
// 1 s, not 3 s), one dial attempt and a 3 s dial budget (connections
// within 1 s, so a dead sentinel is dropped within one dial).
func (c *cluster) sentinelURL(i int) string {
	q := []string{"master_name=" + masterName, "dial_timeout=3s", "dialer_retries=1", "read_timeout=1s", "write_timeout=1s"}
	for k := 1; k < hosts; k++ {
		q = append(q, fmt.Sprintf("addr=%s:%d", c.n.ip((i-1+k)%hosts+1), sentinelPort))
	}
	return fmt.Sprintf("redis://%s:%d/0?%s", c.n.ip(i), sentinelPort, strings.Join(q, "&"))
}

// startHost starts everything of host i: with withNode its NATS node
// (store kept across restarts), Redis (a replica of replicaOf, or the master when empty), its
// sentinel (config kept across restarts: the sentinel rewrites it) and the
// four services.
func (c *cluster) startHost(ctx context.Context, i int, replicaOf string, withNode bool) {
	t := c.t
	t.Helper()
	dir := c.dir[i]
	if withNode {
		c.nodes[i] = startNode(t, c.n, c.server, i, filepath.Join(dir, "nats"))
	}
	args := []string{"--bind", c.n.ip(i), "--port", strconv.Itoa(redisPort), "--dir", dir, "--save", "", "--appendonly", "no",
		"--protected-mode", "no", "--daemonize", "no"}
	if replicaOf != "" {
		host, port, _ := net.SplitHostPort(replicaOf)
		args = append(args, "--replicaof", host, port)
	}
	startOnHost(t, c.n.ns(i), filepath.Join(dir, "redis.log"), os.Environ(), c.redis, args...)
	conf := filepath.Join(dir, "sentinel.conf")
	if _, err := os.Stat(conf); err != nil {
		body := fmt.Sprintf(`bind %s
port %d
dir %s
protected-mode no
daemonize no
sentinel monitor %s %s %d 2
sentinel down-after-milliseconds %[4]s 1000
sentinel failover-timeout %[4]s 4000
sentinel parallel-syncs %[4]s 1
`, c.n.ip(i), sentinelPort, dir, masterName, c.n.ip(1), redisPort)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	startOnHost(t, c.n.ns(i), filepath.Join(dir, "sentinel.log"), os.Environ(), c.redis, conf, "--sentinel")
	testenv.WaitFor(t, time.Minute, fmt.Sprintf("Redis and its sentinel on host %d", i), func() bool {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		r := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("%s:%d", c.n.ip(i), redisPort), MaxRetries: -1})
		defer r.Close()
		s := redis.NewSentinelClient(&redis.Options{Addr: fmt.Sprintf("%s:%d", c.n.ip(i), sentinelPort), MaxRetries: -1})
		defer s.Close()
		return r.Ping(ctx).Err() == nil && s.Ping(ctx).Err() == nil
	})
	c.procs[i] = nil
	for _, svc := range services {
		instance := fmt.Sprintf("h%d-%s", i, strings.TrimPrefix(svc.binary, "vigil-"))
		opts := localstack.ServiceOptions{
			Binary: filepath.Join(c.bin, svc.binary), Service: svc.binary, Instance: instance, NetNS: c.n.ns(i),
			Env: append(c.env, "NATS_URL="+serviceNATSURL(c.n, i, svc.binary, passwords[svc.password]),
				"REDIS_URL="+c.sentinelURL(i)),
			LogPath: filepath.Join(dir, instance+".log"), RegisterTimeout: time.Minute,
		}
		// A service that starts while its host's NATS node is still
		// catching up may exit (stream info timed out); systemd restarts
		// it (Restart=always), and so does the test, up to three times.
		p, err := localstack.StartService(ctx, c.admin, opts)
		for attempt := 1; err != nil && attempt < 3; attempt++ {
			t.Logf("%s did not start (%v); starting it again", instance, strings.SplitN(err.Error(), "\n", 2)[0])
			p, err = localstack.StartService(ctx, c.admin, opts)
		}
		if err != nil {
			t.Fatal(err)
		}
		c.procs[i] = append(c.procs[i], p)
		t.Cleanup(func() {
			_ = p.Stop(15 * time.Second)
			if t.Failed() {
				t.Logf("--- %s log (last lines) ---\n%s", instance, p.Tail(15))
				t.Logf("--- %s log before its shutdown: hand-overs, warnings, errors (last %d) ---\n%s", instance, postMortemLines, postMortem(p.Log()))
			}
		})
	}
}

// postMortemLines bounds what postMortem keeps of one log.
const postMortemLines = 80

// postMortem is what a service's log says of users and partitions
// changing hands, warnings and errors, up to its shutdown (a failed
// run's tail shows only the shutdown): the last postMortemLines such
// lines.
func postMortem(log string) string {
	var keep []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, `"msg":"shutting down"`) {
			break
		}
		for _, mark := range []string{`"level":"WARN"`, `"level":"ERROR"`, `"msg":"partitions `, `"msg":"user gained"`,
			`"msg":"user released"`, `"msg":"caught up"`, `"msg":"membership: `, `"msg":"taking over`} {
			if strings.Contains(line, mark) {
				keep = append(keep, line)
				break
			}
		}
	}
	if len(keep) > postMortemLines {
		keep = keep[len(keep)-postMortemLines:]
	}
	return strings.Join(keep, "\n")
}

// killHost SIGKILLs every process in host i's network namespace and takes
// its link down; PostgreSQL dies with host 1.
func (c *cluster) killHost(i int) {
	t := c.t
	t.Helper()
	out, err := exec.Command("ip", "netns", "pids", c.n.ns(i)).Output()
	if err != nil {
		t.Fatalf("ip netns pids %s: %v", c.n.ns(i), err)
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if msg, err := exec.Command("ip", "link", "set", c.hostLink(i), "down").CombinedOutput(); err != nil {
		t.Fatalf("link of host %d down: %v\n%s", i, err, msg)
	}
	if i == 1 {
		c.pgLink.cut()
		c.pg.Kill()
	}
	for _, p := range c.procs[i] {
		p.Kill() // reaps the killed process
	}
	c.nodes[i].kill()
}

// hostLink is the bridge side of host i's link.
func (c *cluster) hostLink(i int) string { return fmt.Sprintf("%sh%dv", c.n.prefix, i) }

// restoreHost brings host i's link up and starts it again, Redis as a
// replica of the master the sentinels name now.
func (c *cluster) restoreHost(ctx context.Context, i int) {
	t := c.t
	t.Helper()
	if msg, err := exec.Command("ip", "link", "set", c.hostLink(i), "up").CombinedOutput(); err != nil {
		t.Fatalf("link of host %d up: %v\n%s", i, err, msg)
	}
	if i == 1 {
		c.pg.Start()
		c.pgLink.open()
	}
	c.startHost(ctx, i, c.master(ctx, i), true)
}

// master is the Redis master as the sentinels of the hosts other than skip
// name it.
func (c *cluster) master(ctx context.Context, skip int) string {
	var addr string
	testenv.WaitFor(c.t, time.Minute, "a sentinel to name the Redis master", func() bool {
		for j := 1; j <= hosts; j++ {
			if j == skip {
				continue
			}
			ctx, cancel := context.WithTimeout(ctx, time.Second)
			s := redis.NewSentinelClient(&redis.Options{Addr: fmt.Sprintf("%s:%d", c.n.ip(j), sentinelPort), MaxRetries: -1})
			got, err := s.GetMasterAddrByName(ctx, masterName).Result()
			s.Close()
			cancel()
			if err == nil && len(got) == 2 {
				addr = net.JoinHostPort(got[0], got[1])
				return true
			}
		}
		return false
	})
	return addr
}

// waitWhole waits until all three hosts are whole again: every service
// has an instance on each, every stream and bucket has three current
// replicas, and every sentinel knows two healthy replicas and two other
// sentinels.
func (c *cluster) waitWhole(ctx context.Context, js jetstream.JetStream) {
	t := c.t
	t.Helper()
	var why string
	t.Cleanup(func() {
		if t.Failed() && why != "" {
			t.Logf("the cluster was not whole: %s", why)
		}
	})
	testenv.WaitFor(t, 3*time.Minute, "the three hosts to be whole again", func() bool {
		for _, svc := range services {
			if got := localstack.ServiceInstances(c.admin, svc.binary); len(got) != hosts {
				why = fmt.Sprintf("%s has instances %v", svc.binary, got)
				return false
			}
		}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		streams := js.ListStreams(ctx)
		for info := range streams.Info() {
			cl := info.Cluster
			if cl == nil || cl.Leader == "" || len(cl.Replicas) != hosts-1 {
				why = fmt.Sprintf("stream %s: cluster %+v", info.Config.Name, cl)
				return false
			}
			for _, r := range cl.Replicas {
				if !r.Current || r.Offline {
					why = fmt.Sprintf("stream %s: replica %s not current", info.Config.Name, r.Name)
					return false
				}
			}
			stream, err := js.Stream(ctx, info.Config.Name)
			if err != nil {
				why = err.Error()
				return false
			}
			consumers := stream.ListConsumers(ctx)
			for ci := range consumers.Info() {
				// Ephemeral consumers (ordered, KV watchers) have one
				// replica: only a leader and current replicas are asked.
				cl := ci.Cluster
				if cl == nil || cl.Leader == "" {
					why = fmt.Sprintf("consumer %s > %s: cluster %+v", info.Config.Name, ci.Name, cl)
					return false
				}
				for _, r := range cl.Replicas {
					if !r.Current || r.Offline {
						why = fmt.Sprintf("consumer %s > %s: replica %s not current", info.Config.Name, ci.Name, r.Name)
						return false
					}
				}
			}
			if consumers.Err() != nil {
				why = consumers.Err().Error()
				return false
			}
		}
		if streams.Err() != nil {
			why = streams.Err().Error()
			return false
		}
		for j := 1; j <= hosts; j++ {
			s := redis.NewSentinelClient(&redis.Options{Addr: fmt.Sprintf("%s:%d", c.n.ip(j), sentinelPort)})
			reps, err1 := s.Replicas(ctx, masterName).Result()
			sens, err2 := s.Sentinels(ctx, masterName).Result()
			s.Close()
			if err1 != nil || err2 != nil || len(reps) != hosts-1 || len(sens) != hosts-1 {
				why = fmt.Sprintf("sentinel %d: replicas %v (%v), sentinels %v (%v)", j, reps, err1, sens, err2)
				return false
			}
			for _, r := range reps {
				if r["flags"] != "slave" || r["master-link-status"] != "ok" {
					why = fmt.Sprintf("sentinel %d: replica %s flags %s link %s", j, r["name"], r["flags"], r["master-link-status"])
					return false
				}
			}
			for _, s := range sens {
				if s["flags"] != "sentinel" {
					why = fmt.Sprintf("sentinel %d: sentinel %s flags %s", j, s["name"], s["flags"])
					return false
				}
			}
		}
		why = ""
		return true
	})
}

// TestKillRotation runs three hosts (a NATS node, a Redis server with its
// sentinel and every service on each; Redis master on host 1; PostgreSQL
// with host 1), six users with a live rule (two with a webhook at the
// test's receiver) and a command for each user every second. It kills host
// 1 (SIGKILL of every process in its namespace, link down, PostgreSQL
// killed), waits until every user's commands succeed and alerts arrive
// again, restores the host, waits until the cluster is whole; then host 2,
// then host 3. Each recovery must come within recoveryBound (the times
// are logged); at the end nothing acked is lost or doubled
// (verifyNothingLostOrDoubled).
func TestKillRotation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating network namespaces needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2 (ip) is not installed")
	}
	redisServer, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (make deps)")
	}
	script, err := filepath.Abs("netns.sh")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	c := &cluster{t: t, bin: testenv.BuildBinaries(t), redis: redisServer, dir: map[int]string{},
		nodes: map[int]*natsNode{}, procs: map[int][]*localstack.ServiceProcess{}}
	c.server = buildNATSServer(t, c.bin)
	c.n = newNetwork(t, script)
	// VIGIL_TEST_KEEP_DIR keeps each host's files (services' logs, Redis,
	// sentinel) under <dir>/host-<i> for a look after the run.
	keep := os.Getenv("VIGIL_TEST_KEEP_DIR")
	for i := 1; i <= hosts; i++ {
		c.dir[i] = t.TempDir()
		if keep != "" {
			c.dir[i] = filepath.Join(keep, fmt.Sprintf("host-%d", i))
			if err := os.MkdirAll(c.dir[i], 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}

	var adminURLs []string
	for i := 1; i <= hosts; i++ {
		adminURLs = append(adminURLs, fmt.Sprintf("nats://admin:%s@%s:4222", passwords["VIGIL_NATS_ADMIN_PASSWORD"], c.n.ip(i)))
	}
	// A dead host's link drops packets without a reset: the test's
	// connection notices by its pings (every 500 ms, two missed), not the
	// default 2 minutes, so what it measures is the system's recovery.
	c.admin, err = nats.Connect(strings.Join(adminURLs, ","), nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.PingInterval(500*time.Millisecond), nats.MaxPingsOutstanding(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.admin.Close)
	raw, err := jetstream.New(c.admin)
	if err != nil {
		t.Fatal(err)
	}

	c.pg = testenv.StartPostgresServer(t)
	c.pgLink = newRelay(t, c.n.gateway(), strings.TrimPrefix(strings.Split(strings.TrimPrefix(c.pg.URL(), "postgres://"), "/")[0], "vigil@"))
	pool, err := db.NewPool(ctx, c.pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	hook := startHookReceiver(t, net.JoinHostPort(c.n.gateway(), "0"))
	for _, u := range users {
		if _, _, err := db.NewUsers(pool).SeedUser(ctx, "test", u, settingsOf(u, hook.url), "coinbase"); err != nil {
			t.Fatal(err)
		}
	}
	dbURL := strings.Replace(c.pg.URL(), c.pgLink.target, c.pgLink.addr, 1)
	c.env = append(os.Environ(), "DATABASE_URL="+dbURL, "VIGIL_FEED_SOURCE=sim", "VIGIL_STREAM_REPLICAS=3",
		"VIGIL_LOG_LEVEL=debug", "VIGIL_SHUTDOWN_TIMEOUT=5s",
		"VIGIL_WEBHOOK_ACK_WAIT=5s", "VIGIL_WEBHOOK_BACKOFF=50ms", "VIGIL_WEBHOOK_MAX_BACKOFF=1s")

	for i := 1; i <= hosts; i++ {
		c.nodes[i] = startNode(t, c.n, c.server, i, filepath.Join(c.dir[i], "nats"))
	}
	js := natsx.WithReplicas(raw, hosts)
	testenv.WaitFor(t, 60*time.Second, "the cluster to hold vigil's streams with three replicas", func() bool {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		return natsx.EnsureStreams(ctx, js) == nil
	})
	for i := 1; i <= hosts; i++ {
		replicaOf := ""
		if i > 1 {
			replicaOf = fmt.Sprintf("%s:%d", c.n.ip(1), redisPort)
		}
		c.startHost(ctx, i, replicaOf, false)
	}
	c.waitWhole(ctx, raw)

	o := newObserver(t, c.admin, users)
	start := time.Now()
	o.waitRecovered(start, 3*time.Minute, "start")
	t.Logf("every user had alerts and a succeeded command %v after the three hosts were whole", time.Since(start).Round(100*time.Millisecond))

	for i := 1; i <= hosts; i++ {
		c.killHost(i)
		killed := time.Now()
		r := o.waitRecovered(killed, alertsAfterAHostBound, fmt.Sprintf("host %d died", i))
		t.Logf("host %d killed at %s: every user's commands and alerts recovered: %s (target 15s)", i, killed.UTC().Format("15:04:05.000"), r)
		if r.commands > recoveryBound {
			t.Errorf("host %d killed: commands took %v to recover, more than %v", i, r.commands, recoveryBound)
		}
		c.restoreHost(ctx, i)
		c.waitWhole(ctx, raw)
		t.Logf("host %d restored: the cluster was whole again %v after the kill", i, time.Since(killed).Round(100*time.Millisecond))
	}
	verifyNothingLostOrDoubled(ctx, t, raw, pool, o, hook)
}
