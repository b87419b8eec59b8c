package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"vigil.dev/pkg/health"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/testenv"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// get returns the status code and body of url.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestReadinessFollowsNATS serves /readyz and /livez for an instance whose
// only check is its NATS connection, and stops and restarts the NATS
// server: not ready (503 naming the check) while it is down, ready again
// after it is back, alive throughout.
func TestReadinessFollowsNATS(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := localstack.StartNATS(ctx, localstack.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(srv.URL())
	port, _ := strconv.Atoi(u.Port())
	t.Cleanup(func() { _ = srv.Stop() })
	nc, err := nats.Connect(srv.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	h := health.New(quiet())
	h.Add("nats", func(context.Context) error {
		if s := nc.Status(); s != nats.CONNECTED {
			return errors.New("NATS connection " + s.String())
		}
		return nil
	})
	addr, err := h.Serve(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + addr
	ready := func(want int) func() bool {
		return func() bool { code, _ := get(t, base+"/readyz"); return code == want }
	}
	testenv.WaitFor(t, 30*time.Second, "/readyz 200 with NATS up", ready(http.StatusOK))
	if code, body := get(t, base+"/livez"); code != http.StatusOK {
		t.Fatalf("/livez with NATS up: %d %s", code, body)
	}

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "/readyz 503 with NATS down", ready(http.StatusServiceUnavailable))
	_, body := get(t, base+"/readyz")
	var r health.Report
	if err := json.Unmarshal([]byte(body), &r); err != nil || r.Ready || !strings.Contains(r.Checks["nats"], "NATS connection") {
		t.Fatalf("/readyz with NATS down: %s (%v)", body, err)
	}
	if code, body := get(t, base+"/livez"); code != http.StatusOK {
		t.Fatalf("/livez while only waiting for NATS: %d %s, want 200 (a restart would not help)", code, body)
	}

	srv, err = localstack.StartNATS(ctx, localstack.Options{Dir: dir, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 60*time.Second, "/readyz 200 after NATS came back", ready(http.StatusOK))
}

// TestWatchdogIsFedOnlyWhileAlive runs the checks under a fake systemd
// (NOTIFY_SOCKET, WATCHDOG_USEC): READY=1 once ready, WATCHDOG=1 after
// each round while alive, none while a liveness check fails, and again
// once it passes.
func TestWatchdogIsFedOnlyWhileAlive(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	var wedged atomic.Bool
	h := health.New(quiet())
	h.AddLive("loop", func(context.Context) error {
		if wedged.Load() {
			return errors.New("event loop stuck")
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.Run(ctx, 0)

	buf := make([]byte, 512)
	next := func() string {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no sd_notify message: %v", err)
		}
		return string(buf[:n])
	}
	// waitFor reads messages until one equal to (or, for STATUS=, starting
	// with) want, returning those read before it.
	waitFor := func(want string) []string {
		t.Helper()
		var before []string
		for range 1000 {
			m := next()
			if m == want || (strings.HasPrefix(want, "STATUS=") && strings.HasPrefix(m, want)) {
				return before
			}
			before = append(before, m)
		}
		t.Fatalf("no %q among 1000 messages", want)
		return nil
	}
	waitFor("READY=1")
	waitFor("WATCHDOG=1")

	wedged.Store(true)
	waitFor("STATUS=not ready")
	// The rounds while wedged: STATUS only, never WATCHDOG.
	for range 3 {
		if m := next(); m == "WATCHDOG=1" || !strings.HasPrefix(m, "STATUS=not ready") {
			t.Fatalf("while a liveness check fails: %q, want only STATUS=not ready", m)
		}
	}
	wedged.Store(false)
	before := waitFor("WATCHDOG=1")
	if len(before) == 0 || !strings.HasPrefix(before[len(before)-1], "STATUS=ready") {
		t.Fatalf("watchdog resumed after %q, want STATUS=ready first", before)
	}
}

// TestRouteServedBesideHealth serves a route added with Route (as /metrics
// is) on the health endpoint beside /livez and /readyz.
func TestRouteServedBesideHealth(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := health.New(quiet())
	h.Route("/metrics", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "vigil_up 1\n")
	}))
	addr, err := h.Serve(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, "http://"+addr+"/metrics"); code != http.StatusOK || body != "vigil_up 1\n" {
		t.Fatalf("/metrics: %d %q", code, body)
	}
	testenv.WaitFor(t, 30*time.Second, "/readyz 200 without checks", func() bool {
		code, _ := get(t, "http://"+addr+"/readyz")
		return code == http.StatusOK
	})
}

// TestDegradedCheckKeepsReady reports a failing AddDegraded check as
// "degraded: <reason>" while the instance stays ready and alive, and "ok"
// once it passes.
func TestDegradedCheckKeepsReady(t *testing.T) {
	h := health.New(quiet())
	var down atomic.Bool
	down.Store(true)
	h.AddDegraded("postgres", func(context.Context) error {
		if down.Load() {
			return errors.New("connection refused")
		}
		return nil
	})
	if r := h.Round(context.Background()); !r.Ready || !r.Alive || r.Checks["postgres"] != "degraded: connection refused" {
		t.Errorf("while failing: %+v", r)
	}
	down.Store(false)
	if r := h.Round(context.Background()); !r.Ready || r.Checks["postgres"] != "ok" {
		t.Errorf("once passing: %+v", r)
	}
}
