package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/daemon"
)

// TestRun runs the binary's Run as main does, configured by environment:
// a plain request with no headers is accepted and executed, users without
// a desired state are seeded at start, and ending the context shuts down
// cleanly.
func TestRun(t *testing.T) {
	e := newEnv(t, 1)
	t.Setenv("NATS_URL", e.url)
	t.Setenv("REDIS_URL", testenv.Redis(t))
	t.Setenv("DATABASE_URL", e.dbURL)
	t.Setenv("VIGIL_INSTANCE", "run-test")
	t.Setenv("VIGIL_CONTROL_STEP_TIMEOUT", "2s")
	ctx, cancel := context.WithCancel(context.Background())
	var out testenv.Buffer
	done, returned := make(chan error, 1), make(chan struct{})
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
	testenv.WaitFor(t, waitTimeout, "bob's desired state to be seeded", func() bool { return e.state("bob").Exists() })
	if st := e.state("bob").State; st.Revision != 1 || st.Paused || st.Mode != contract.ModePositionMonitor || st.ExchangeID != e.users["bob"].exchange {
		t.Errorf("seeded state %+v", st)
	}
	resp, err := e.nc.Request("vigil.cmd.alice.pause", []byte("{}"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ack := decode[contract.Ack](t, resp.Data)
	if !ack.Accepted || ack.Position != 0 || len(resp.Header) != 0 {
		t.Fatalf("ack %s, headers %v", resp.Data, resp.Header)
	}
	if r := e.result("alice", ack.ID); r.Status != contract.StatusSucceeded {
		t.Errorf("%s %+v", r.Status, r.Error)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if !strings.Contains(out.String(), `"msg":"running"`) {
		t.Errorf("log lacks the running line:\n%s", out.String())
	}
}

// TestRunHelp lists control's variables for -h.
func TestRunHelp(t *testing.T) {
	var out bytes.Buffer
	if err := daemon.Run(context.Background(), []string{"-h"}, &out); !errors.Is(err, config.ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	for _, v := range []string{"VIGIL_CONTROL_QUEUE_LIMIT", "VIGIL_CONTROL_STEP_TIMEOUT", "DATABASE_URL", "REDIS_URL", "NATS_URL"} {
		if !strings.Contains(out.String(), v) {
			t.Errorf("usage lacks %s", v)
		}
	}
}

// TestRunBadConfig fails at start with one line naming the variable.
func TestRunBadConfig(t *testing.T) {
	t.Setenv("NATS_URL", "nats://127.0.0.1:1")
	t.Setenv("REDIS_URL", "redis://127.0.0.1:1/0")
	t.Setenv("DATABASE_URL", "postgres://vigil@127.0.0.1:1/vigil")
	for _, tc := range []struct{ name, value string }{
		{"VIGIL_CONTROL_QUEUE_LIMIT", "0"}, {"VIGIL_CONTROL_STEP_TIMEOUT", "-1s"}, {"VIGIL_CONTROL_BACKFILL_BARS", "1000000"}, {"VIGIL_CONTROL_PING_STALL", "soon"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(tc.name, tc.value)
			err := daemon.Run(context.Background(), nil, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.name) || strings.Contains(err.Error(), "\n") {
				t.Errorf("err = %v", err)
			}
		})
	}
}
