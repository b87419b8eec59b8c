package daemon_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/daemon"
)

// TestRunWhilePostgresIsDown starts vigil-control while PostgreSQL is
// down: it comes up ready with PostgreSQL reported degraded, a command of a
// user cached in VIGIL_USERS succeeds, and once PostgreSQL is back the
// migrations run, readiness reports it ok and command_log holds the
// command.
func TestRunWhilePostgresIsDown(t *testing.T) {
	e, pg := newEnvOnOwnPostgres(t)
	warm := e.startControl("warm", testSettings(), 0) // caches alice in VIGIL_USERS
	paused := e.accept("alice", "pause", "")
	if r := e.result("alice", paused.ID); r.Status != contract.StatusSucceeded {
		t.Fatalf("pause before the outage: %s %+v", r.Status, r.Error)
	}
	e.publishedRow(paused.ID)
	warm.Stop(t)
	pg.Stop()

	readyz := "http://127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)) + "/readyz"
	t.Setenv("NATS_URL", e.url)
	t.Setenv("REDIS_URL", testenv.Redis(t))
	t.Setenv("DATABASE_URL", pg.URL())
	t.Setenv("VIGIL_INSTANCE", "outage")
	t.Setenv("VIGIL_CONTROL_STEP_TIMEOUT", "2s")
	t.Setenv("VIGIL_HEALTH_ADDR", strings.TrimSuffix(strings.TrimPrefix(readyz, "http://"), "/readyz"))
	ctx, cancel := context.WithCancel(context.Background())
	done, returned := make(chan error, 1), make(chan struct{})
	var out testenv.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of vigil-control:\n%s", out.String())
		}
	})
	go func() {
		done <- daemon.Run(ctx, nil, &out)
		close(returned)
	}()
	t.Cleanup(func() {
		cancel()
		<-returned
	})
	testenv.WaitFor(t, waitTimeout, "vigil-control to answer $SRV.PING", func() bool {
		_, err := e.nc.Request("$SRV.PING.vigil-control", nil, 200*time.Millisecond)
		return err == nil
	})
	testenv.WaitFor(t, waitTimeout, "/readyz 200 with postgres degraded", func() bool {
		code, body := getBody(readyz)
		return code == http.StatusOK && strings.Contains(body, `"postgres":"degraded: `)
	})
	var resumed contract.Ack
	testenv.WaitFor(t, waitTimeout, "vigil-control to take commands", func() bool {
		resp, err := e.nc.Request("vigil.cmd.alice.resume", nil, 10*time.Second)
		if errors.Is(err, nats.ErrNoResponders) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		resumed = decode[contract.Ack](t, resp.Data)
		return true
	})
	if !resumed.Accepted {
		t.Fatalf("resume while PostgreSQL is down: %+v", resumed.Error)
	}
	if r := e.result("alice", resumed.ID); r.Status != contract.StatusSucceeded {
		t.Errorf("resume while PostgreSQL is down: %s %+v", r.Status, r.Error)
	}

	pg.Start()
	testenv.WaitFor(t, waitTimeout, "/readyz to report postgres ok", func() bool {
		code, body := getBody(readyz)
		return code == http.StatusOK && strings.Contains(body, `"postgres":"ok"`)
	})
	testenv.WaitFor(t, waitTimeout, "command_log to hold the resume", func() bool {
		row, ok := e.logRow(resumed.ID)
		return ok && row.Status == string(contract.StatusSucceeded) && row.Published
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// getBody returns the status code and body of url (0 when unreachable).
func getBody(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
