package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// fakeControl answers vigil.cmd.demo.* on a real NATS server like
// vigil-control accepting everything (and never publishing a result); it
// hands each request to the test.
func fakeControl(t *testing.T) (env map[string]string, requests <-chan *nats.Msg) {
	t.Helper()
	url := testenv.StartNATS(t).URL()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	got := make(chan *nats.Msg, 8)
	if _, err := nc.Subscribe("vigil.cmd.demo.*", func(m *nats.Msg) {
		cmd := contract.Command(strings.TrimPrefix(m.Subject, "vigil.cmd.demo."))
		ack, _ := json.Marshal(contract.Ack{ID: m.Header.Get(msgIDHeader), User: "demo", Command: cmd, Accepted: true})
		_ = m.Respond(ack)
		got <- m
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return map[string]string{"XDG_CONFIG_HOME": t.TempDir(), "NATS_URL": url}, got
}

// TestCancelCommand: vigilctl cancel --id sends the id to cancel in the
// payload; its own id is --cancel-id (the Nats-Msg-Id header).
func TestCancelCommand(t *testing.T) {
	env, requests := fakeControl(t)
	code, stdout, stderr := runMain(t, env, "cancel", "--user", "demo", "--id", "op-long-1", "--cancel-id", "op-cancel-1", "--no-wait")
	if code != ExitOK || !strings.Contains(stdout, "cancel for demo accepted: id op-cancel-1") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	m := <-requests
	if m.Subject != "vigil.cmd.demo.cancel" || string(m.Data) != `{"id":"op-long-1"}` || m.Header.Get(msgIDHeader) != "op-cancel-1" {
		t.Errorf("request %s %s with id %q", m.Subject, m.Data, m.Header.Get(msgIDHeader))
	}
	if code, _, stderr := runMain(t, env, "cancel", "--user", "demo", "--id", "x", "--cancel-id", "a b"); code != ExitRejected || !strings.Contains(stderr, "--cancel-id: ") {
		t.Errorf("bad --cancel-id: exit %d, %s", code, stderr)
	}
}

// TestInterruptedBackfillOffersCancel: Ctrl-C while vigilctl waits on a
// force-backfill job says the job goes on and prints the command that
// cancels it; other commands get no such offer.
func TestInterruptedBackfillOffersCancel(t *testing.T) {
	env, requests := fakeControl(t)
	for _, tc := range []struct {
		args  []string
		offer bool
	}{
		{[]string{"backfill", "--user", "demo", "--symbol", "BTC-USD", "--id", "op-long-1"}, true},
		{[]string{"reload", "--user", "demo", "--id", "op-reload-1"}, false},
	} {
		ctx, interrupt := context.WithCancel(context.Background())
		stdout := &acceptedWriter{accepted: make(chan struct{})}
		go func() {
			select {
			case <-stdout.accepted: // the ACK is printed: vigilctl waits for the result
			case <-time.After(30 * time.Second):
			}
			interrupt()
		}()
		var stderr bytes.Buffer
		code := Main(ctx, tc.args, IO{Stdout: stdout, Stderr: &stderr,
			Getenv: func(k string) string { return env[k] }, Terminal: func(io.Writer) (bool, int) { return false, 0 }})
		<-requests
		interrupt()
		hint := "to cancel it: vigilctl cancel --user demo --id op-long-1"
		if code != ExitFailed || strings.Contains(stderr.String(), hint) != tc.offer {
			t.Errorf("vigilctl %v interrupted: exit %d, stderr %q (offer of cancel expected: %v)", tc.args, code, stderr.String(), tc.offer)
		}
	}
}

// acceptedWriter collects output and closes accepted once the ACK line
// ("... accepted: id ...") was written.
type acceptedWriter struct {
	mu       sync.Mutex
	buf      bytes.Buffer
	accepted chan struct{}
	closed   bool
}

func (w *acceptedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	if !w.closed && strings.Contains(w.buf.String(), " accepted: ") {
		w.closed = true
		close(w.accepted)
	}
	return n, err
}
