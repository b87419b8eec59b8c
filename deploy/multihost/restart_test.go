//go:build ha

package multihost

import (
	"context"
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
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
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
// append-only file, as in production) and PostgreSQL; one instance of
// every service; the users of users (webhookUsers with a webhook at the
// test's receiver).
type singleHost struct {
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

// startSingleHost starts the dependencies, the four services and the
// observer, and waits until every user has had alerts and a succeeded
// command.
func startSingleHost(t *testing.T, ctx context.Context) (*singleHost, func()) {
	t.Helper()
	bin := testenv.BuildBinaries(t)
	h := &singleHost{nats: startNATSProcess(t, buildNATSServer(t, bin))}
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
		instance := "s-" + strings.TrimPrefix(svc.binary, "vigil-")
		p, err := localstack.StartService(ctx, h.admin, localstack.ServiceOptions{
			Binary: filepath.Join(bin, svc.binary), Service: svc.binary, Instance: instance, Env: env,
			LogPath: filepath.Join(t.TempDir(), instance+".log"), RegisterTimeout: time.Minute,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = p.Stop(15 * time.Second)
			if t.Failed() {
				t.Logf("--- %s log (last lines) ---\n%s", instance, p.Tail(25))
			}
		})
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
// SIGKILL under the running services and starts it again: every service
// reconnects by itself, commands and alerts come back, and nothing acked
// is lost or doubled.
func TestNATSRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h, verify := startSingleHost(t, ctx)
	h.outage(t, "NATS", false, h.nats.kill, h.nats.start)
	verify()
}

// TestRedisRestart kills redis-server (append-only file on) with SIGKILL
// under the running services and starts it again on its port and data.
func TestRedisRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h, verify := startSingleHost(t, ctx)
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
	h, verify := startSingleHost(t, ctx)
	h.outage(t, "PostgreSQL", true, h.pg.Kill, h.pg.Start)
	verify()
}
