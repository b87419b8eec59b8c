// Package multihost runs vigil across hosts on one machine: network
// namespaces made by netns.sh, a NATS cluster node (deploy/nats/cluster.conf)
// and one instance of every service on each, Redis and PostgreSQL reached
// over the network. Its test needs root (it creates namespaces) and is
// skipped without it.
package multihost

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/partition"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// hosts is how many hosts the test runs.
const hosts = 3

// passwords of deploy/nats/auth.conf and cluster.conf, by variable.
var passwords = map[string]string{
	"VIGIL_NATS_ADMIN_PASSWORD":      "admin-pw",
	"VIGIL_NATS_ALICE_PASSWORD":      "alice-pw",
	"VIGIL_NATS_BOB_PASSWORD":        "bob-pw",
	"VIGIL_NATS_FEED_PASSWORD":       "feed-pw",
	"VIGIL_NATS_INDICATORS_PASSWORD": "indicators-pw",
	"VIGIL_NATS_ALERTS_PASSWORD":     "alerts-pw",
	"VIGIL_NATS_CONTROL_PASSWORD":    "control-pw",
	"VIGIL_NATS_CLUSTER_PASSWORD":    "route-pw",
}

// services are the binaries, with their NATS user's password variable.
var services = []struct{ binary, password string }{
	{"vigil-feed", "VIGIL_NATS_FEED_PASSWORD"},
	{"vigil-indicators", "VIGIL_NATS_INDICATORS_PASSWORD"},
	{"vigil-alerts", "VIGIL_NATS_ALERTS_PASSWORD"},
	{"vigil-control", "VIGIL_NATS_CONTROL_PASSWORD"},
}

// users are the tenants of the test; each has a live price rule on the
// simulator that fires about once a wall second.
var users = []string{"u1", "u2", "u3", "u4", "u5", "u6"}

const liveSettings = `{"mode":"scalper-macdv","symbols":["BTC-USD"],"rules":{"scalper-macdv":[
	{"id":"price-live","symbol":"BTC-USD","timeframe":"1m","kind":"threshold","indicator":"price","op":"above","value":1,"evaluate":"live","cooldown":"1m"}]}}`

// network is the hosts made by netns.sh.
type network struct {
	prefix, subnet string
}

func (n network) ns(i int) string { return fmt.Sprintf("%sh%d", n.prefix, i) }
func (n network) ip(i int) string { return fmt.Sprintf("%s.%d", n.subnet, i) }
func (n network) gateway() string { return n.subnet + ".254" }

// newNetwork creates the hosts and removes them when the test ends.
func newNetwork(t *testing.T, script string) network {
	t.Helper()
	pid := os.Getpid()
	n := network{prefix: fmt.Sprintf("vg%d", pid%100000), subnet: fmt.Sprintf("10.77.%d", 10+pid%200)}
	down := func() { _ = exec.Command(script, "down", n.prefix, fmt.Sprint(hosts)).Run() }
	down() // a namespace left by a killed run of the same pid
	if out, err := exec.Command(script, "up", n.prefix, fmt.Sprint(hosts), n.subnet).CombinedOutput(); err != nil {
		t.Fatalf("netns.sh up: %v\n%s", err, out)
	}
	t.Cleanup(down)
	return n
}

// forward accepts connections on the gateway address and copies them to
// target (Redis and PostgreSQL listen on loopback only), returning the
// address the hosts use.
func forward(t *testing.T, gateway, target string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(gateway, "0"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				_ = in.Close()
				continue
			}
			go func() {
				_, _ = io.Copy(out, in)
				_ = out.Close()
			}()
			go func() {
				_, _ = io.Copy(in, out)
				_ = in.Close()
			}()
		}
	}()
	return l.Addr().String()
}

// viaGateway is rawURL with its host replaced by a forwarder on the
// gateway.
func viaGateway(t *testing.T, n network, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = forward(t, n.gateway(), u.Host)
	return u.String()
}

// natsNode is a nats-server process of the cluster on one host.
type natsNode struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// kill stops the node at once, like a host that lost power.
func (p *natsNode) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// buildNATSServer builds the nats-server of deploy's go.mod.
func buildNATSServer(t *testing.T, bin string) string {
	t.Helper()
	out := filepath.Join(bin, "nats-server")
	cmd := exec.Command("go", "build", "-o", out, "github.com/nats-io/nats-server/v2")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build nats-server: %v\n%s", err, msg)
	}
	return out
}

// startNode runs the cluster node of host i with deploy/nats/cluster.conf
// and its JetStream store in store.
func startNode(t *testing.T, n network, server string, i int, store string) *natsNode {
	t.Helper()
	conf, err := filepath.Abs("../nats/cluster.conf")
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(),
		"VIGIL_NATS_NODE="+fmt.Sprintf("node-%d", i), "VIGIL_NATS_HOST="+n.ip(i), "VIGIL_NATS_STORE="+store)
	for j := 1; j <= hosts; j++ {
		env = append(env, fmt.Sprintf("VIGIL_NATS_ROUTE%d=nats-route://vigil-route:%s@%s:6222", j, passwords["VIGIL_NATS_CLUSTER_PASSWORD"], n.ip(j)))
	}
	for k, v := range passwords {
		env = append(env, k+"="+v)
	}
	// Beside the store (appended to across restarts), so a kept host
	// directory (VIGIL_TEST_KEEP_DIR) has the node's log too.
	logFile, err := os.OpenFile(store+".log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", n.ns(i), server, "-c", conf)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &natsNode{cmd: cmd, done: make(chan struct{})}
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
			p.kill()
		}
		if t.Failed() {
			if b, err := os.ReadFile(logFile.Name()); err == nil {
				t.Logf("--- nats node %d log ---\n%s", i, tail(string(b), 20))
			}
		}
	})
	return p
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(parts[max(0, len(parts)-lines):], "\n")
}

// serviceNATSURL lists every node, host i's own first, with the service's
// credentials.
func serviceNATSURL(n network, i int, user, password string) string {
	var urls []string
	for k := range hosts {
		j := (i-1+k)%hosts + 1
		urls = append(urls, fmt.Sprintf("nats://%s:%s@%s:4222", user, password, n.ip(j)))
	}
	return strings.Join(urls, ",")
}

// TestAcrossHosts runs three hosts, each with a NATS cluster node and one
// instance of every service, R3 streams, and six users: every command is
// answered by the instances of all hosts, every user gets alerts; then one
// host dies (its NATS node and services killed) and every user still gets
// alerts, and commands succeed with the two hosts left.
func TestAcrossHosts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating network namespaces needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2 (ip) is not installed")
	}
	script, err := filepath.Abs("netns.sh")
	if err != nil {
		t.Fatal(err)
	}
	bin := testenv.BuildBinaries(t)
	server := buildNATSServer(t, bin)
	n := newNetwork(t, script)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	nodes := map[int]*natsNode{}
	for i := 1; i <= hosts; i++ {
		nodes[i] = startNode(t, n, server, i, t.TempDir())
	}
	var adminURLs []string
	for i := 1; i <= hosts; i++ {
		adminURLs = append(adminURLs, fmt.Sprintf("nats://admin:%s@%s:4222", passwords["VIGIL_NATS_ADMIN_PASSWORD"], n.ip(i)))
	}
	admin, err := nats.Connect(strings.Join(adminURLs, ","), nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	raw, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	js := natsx.WithReplicas(raw, hosts)
	testenv.WaitFor(t, 60*time.Second, "the cluster to hold vigil's streams with three replicas", func() bool {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		return natsx.EnsureStreams(ctx, js) == nil
	})

	dbURL := testenv.Postgres(t)
	pool, err := db.NewPool(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	for _, u := range users {
		if _, _, err := db.NewUsers(pool).SeedUser(ctx, "test", u, json.RawMessage(liveSettings), "coinbase"); err != nil {
			t.Fatal(err)
		}
	}
	env := append(os.Environ(), "REDIS_URL="+viaGateway(t, n, testenv.Redis(t)), "DATABASE_URL="+viaGateway(t, n, dbURL),
		"VIGIL_FEED_SOURCE=sim", "VIGIL_STREAM_REPLICAS=3", "VIGIL_LOG_LEVEL=debug", "VIGIL_SHUTDOWN_TIMEOUT=5s")
	procs := map[int][]*localstack.ServiceProcess{}
	for i := 1; i <= hosts; i++ {
		for _, svc := range services {
			instance := fmt.Sprintf("h%d-%s", i, strings.TrimPrefix(svc.binary, "vigil-"))
			procs[i] = append(procs[i], testenv.StartService(t, admin, localstack.ServiceOptions{
				Binary: filepath.Join(bin, svc.binary), Service: svc.binary, Instance: instance, NetNS: n.ns(i),
				Env:     append(env, "NATS_URL="+serviceNATSURL(n, i, svc.binary, passwords[svc.password])),
				LogPath: filepath.Join(t.TempDir(), instance+".log"), RegisterTimeout: time.Minute,
			}))
		}
	}
	for _, svc := range services {
		if got := localstack.ServiceInstances(admin, svc.binary); len(got) != hosts {
			t.Fatalf("%s has instances %v, want one on each of %d hosts", svc.binary, got, hosts)
		}
	}

	alerts, err := raw.Stream(ctx, contract.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	alertsSince := func(seq uint64) map[string]bool {
		got := map[string]bool{}
		for _, u := range users {
			ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			m, err := alerts.GetLastMsgForSubject(ctx, "vigil.alert."+u+".>")
			cancel()
			if err == nil && m.Sequence > seq {
				got[u] = true
			}
		}
		return got
	}
	testenv.WaitFor(t, 90*time.Second, "alerts of every user", func() bool { return len(alertsSince(0)) == len(users) })
	// The ownership buckets the services create are replicated like the
	// streams (VIGIL_STREAM_REPLICAS).
	for _, bucket := range []string{membership.Bucket, partition.LeaseBucket, natsx.QueueBucket.Bucket, natsx.UsersBucket.Bucket} {
		kv, err := raw.KeyValue(ctx, bucket)
		if err != nil {
			t.Fatalf("bucket %s: %v", bucket, err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if r := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Replicas; r != hosts {
			t.Errorf("bucket %s has %d replicas, want %d", bucket, r, hosts)
		}
	}
	logShares(ctx, t, raw, admin)
	for _, cmd := range []contract.Command{contract.CmdPause, contract.CmdResume} {
		res := command(t, admin, "u1", cmd)
		if res.Status != contract.StatusSucceeded {
			t.Fatalf("%s: %+v", cmd, res)
		}
		for _, st := range res.Steps {
			if st.Instances != hosts || st.Acked != hosts {
				t.Fatalf("%s step %s %s: %d of %d instances acked, want %d", cmd, st.Service, st.Verb, st.Acked, st.Instances, hosts)
			}
		}
	}

	// Host 2 dies: its NATS node and every service on it, without a goodbye.
	for _, p := range procs[2] {
		p.Kill()
	}
	nodes[2].kill()
	died := time.Now()
	var lastBefore uint64
	testenv.WaitFor(t, 30*time.Second, "the alerts stream to answer after host 2 died", func() bool {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		info, err := alerts.Info(ctx)
		if err == nil {
			lastBefore = info.State.LastSeq
		}
		return err == nil
	})
	var missing []string
	t.Cleanup(func() {
		if t.Failed() && len(missing) > 0 {
			t.Logf("users without an alert after host 2 died: %v", missing)
		}
	})
	testenv.WaitFor(t, 90*time.Second, "alerts of every user after host 2 died", func() bool {
		got := alertsSince(lastBefore)
		missing = missing[:0]
		for _, u := range users {
			if !got[u] {
				missing = append(missing, u)
			}
		}
		return len(missing) == 0
	})
	t.Logf("every user had a new alert %v after host 2 died", time.Since(died).Round(time.Millisecond))
	testenv.WaitFor(t, 60*time.Second, "a pause and resume acked by the instances of the two hosts left", func() bool {
		for _, cmd := range []contract.Command{contract.CmdPause, contract.CmdResume} {
			res := command(t, admin, "u2", cmd)
			if res.Status != contract.StatusSucceeded {
				t.Logf("%s after host 2 died: %s %v", cmd, res.Status, res.Error)
				return false
			}
			for _, st := range res.Steps {
				if st.Instances != hosts-1 || st.Acked != hosts-1 {
					return false
				}
			}
		}
		return true
	})
	t.Logf("pause and resume succeeded on the two hosts left %v after host 2 died", time.Since(died).Round(time.Millisecond))
}

// consumerDelivery is what the partitioned consumers of a service's
// instances had been delivered at one moment, and the stream's last
// sequence then.
type consumerDelivery struct {
	delivered map[string]uint64 // by instance name
	lastSeq   uint64
}

// deliveries reads the delivered counts of the consumers of service's
// instances (named <service>-<instance id>) on stream.
func deliveries(ctx context.Context, t *testing.T, js jetstream.JetStream, admin *nats.Conn, stream, service string) consumerDelivery {
	t.Helper()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := consumerDelivery{delivered: map[string]uint64{}, lastSeq: info.State.LastSeq}
	for name, id := range localstack.ServiceInstances(admin, service) {
		c, err := st.Consumer(ctx, service+"-"+id)
		if err != nil {
			t.Fatalf("consumer of %s (%s) on %s: %v", name, id, stream, err)
		}
		ci, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		d.delivered[name] = ci.Delivered.Consumer
	}
	return d
}

// logShares measures, over a window of at least 500 new messages of each
// stream, the share of VIGIL_CANDLES each host's indicators instance
// received and of VIGIL_INDICATORS each alerts instance received, and
// logs them. Each instance receives its partitions only: together they
// receive each message about once (at most 20 % more: redeliveries, and
// the counters and the stream are read a moment apart), not once per
// instance as a consume-everything design would.
func logShares(ctx context.Context, t *testing.T, js jetstream.JetStream, admin *nats.Conn) {
	t.Helper()
	for _, c := range []struct{ stream, service string }{
		{contract.StreamCandles, "vigil-indicators"}, {contract.StreamIndicators, "vigil-alerts"},
	} {
		before := deliveries(ctx, t, js, admin, c.stream, c.service)
		var after consumerDelivery
		testenv.WaitFor(t, 2*time.Minute, "500 new messages in "+c.stream, func() bool {
			after = deliveries(ctx, t, js, admin, c.stream, c.service)
			return after.lastSeq >= before.lastSeq+500
		})
		grown := after.lastSeq - before.lastSeq
		var total uint64
		var shares []string
		for _, name := range slices.Sorted(maps.Keys(after.delivered)) {
			n := after.delivered[name] - before.delivered[name]
			total += n
			shares = append(shares, fmt.Sprintf("%s %d (%.1f%%)", name, n, 100*float64(n)/float64(grown)))
		}
		t.Logf("%s grew by %d messages; received by %s: %s; together %.2f× the stream", c.stream, grown, c.service, strings.Join(shares, ", "), float64(total)/float64(grown))
		if len(after.delivered) != hosts {
			t.Errorf("%s: consumers of %d instances, want %d", c.service, len(after.delivered), hosts)
		}
		if float64(total) > 1.2*float64(grown) {
			t.Errorf("%s's instances received %d messages of the %d the stream grew by: more than their partitions", c.service, total, grown)
		}
	}
}

// command sends cmd for user as admin and waits for its result.
func command(t *testing.T, nc *nats.Conn, user string, cmd contract.Command) contract.Result {
	t.Helper()
	sub, err := nc.SubscribeSync(contract.ResultSubject(user, "*"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe() //nolint:errcheck // test cleanup
	reply, err := nc.Request(contract.CommandSubject(user, cmd), []byte(`{}`), 15*time.Second)
	if err != nil {
		t.Fatalf("%s %s: %v", user, cmd, err)
	}
	var ack contract.Ack
	if err := json.Unmarshal(reply.Data, &ack); err != nil || !ack.Accepted {
		t.Fatalf("%s %s: ACK %s (%v)", user, cmd, reply.Data, err)
	}
	for {
		m, err := sub.NextMsg(30 * time.Second)
		if err != nil {
			t.Fatalf("%s %s: no result: %v", user, cmd, err)
		}
		var res contract.Result
		if err := json.Unmarshal(m.Data, &res); err != nil {
			t.Fatal(err)
		}
		if res.ID == ack.ID {
			return res
		}
	}
}
