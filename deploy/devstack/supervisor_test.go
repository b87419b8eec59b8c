package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLineWriterWithPrefix(t *testing.T) {
	cases := []struct {
		name   string
		chunks []string
		want   string
	}{
		{"one line", []string{"hello\n"}, "[x] hello\n"},
		{"two lines in one write", []string{"a\nb\n"}, "[x] a\n[x] b\n"},
		{"line split across writes", []string{"hel", "lo\nwor", "ld\n"}, "[x] hello\n[x] world\n"},
		{"unfinished last line is flushed", []string{"a\nb"}, "[x] a\n[x] b\n"},
		{"empty line", []string{"\n"}, "[x] \n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			w := &lineWriter{emit: prefixLines(&out, "[x] ")}
			for _, c := range tc.chunks {
				if n, err := w.Write([]byte(c)); err != nil || n != len(c) {
					t.Fatalf("Write(%q) = %d, %v", c, n, err)
				}
			}
			w.Flush()
			if out.String() != tc.want {
				t.Errorf("output %q, want %q", out.String(), tc.want)
			}
		})
	}
}

// lineRecorder collects written lines and signals each one.
type lineRecorder struct {
	mu    sync.Mutex
	lines []string
	added chan struct{}
}

func newLineRecorder() *lineRecorder {
	return &lineRecorder{added: make(chan struct{}, 100)}
}

func (r *lineRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.lines = append(r.lines, strings.TrimSuffix(string(p), "\n"))
	r.mu.Unlock()
	r.added <- struct{}{}
	return len(p), nil
}

// waitFor waits until n lines equal to line were written.
func (r *lineRecorder) waitFor(t *testing.T, line string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		count := 0
		for _, l := range r.lines {
			if l == line {
				count++
			}
		}
		r.mu.Unlock()
		if count >= n {
			return
		}
		select {
		case <-r.added:
		case <-deadline:
			t.Fatalf("%q written %d times in %v, want %d", line, count, timeout, n)
		}
	}
}

func script(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "svc.sh")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startSupervise runs supervise in the background; the returned function
// cancels it and reports how long supervise took to return.
func startSupervise(t *testing.T, c child) (stop func() time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		supervise(ctx, c)
		close(done)
	}()
	return func() time.Duration {
		start := time.Now()
		cancel()
		select {
		case <-done:
			return time.Since(start)
		case <-time.After(30 * time.Second):
			t.Fatal("supervise did not return 30 s after cancel")
			return 0
		}
	}
}

func TestSuperviseRestartsAChildThatExits(t *testing.T) {
	out := newLineRecorder()
	stop := startSupervise(t, child{
		name: "svc", path: script(t, `echo "up $GREETING"; exit 3`),
		env: []string{"GREETING=hi"}, lines: prefixLines(out, "[svc] "), grace: time.Second, log: quietLogger(),
	})
	out.waitFor(t, "[svc] up hi", 2, 10*time.Second)
	stop()
}

func TestSuperviseStopsChildWithSIGTERM(t *testing.T) {
	out := newLineRecorder()
	stop := startSupervise(t, child{
		name: "svc", path: script(t, `trap 'echo "got TERM"; exit 0' TERM; echo ready; while :; do sleep 0.05; done`),
		lines: prefixLines(out, "[svc] "), grace: 10 * time.Second, log: quietLogger(),
	})
	out.waitFor(t, "[svc] ready", 1, 10*time.Second)
	if took := stop(); took > 5*time.Second {
		t.Errorf("stopping took %v, want the child to exit on SIGTERM", took)
	}
	out.waitFor(t, "[svc] got TERM", 1, time.Second)
}

func TestSuperviseKillsChildThatIgnoresSIGTERM(t *testing.T) {
	out := newLineRecorder()
	const grace = 300 * time.Millisecond
	stop := startSupervise(t, child{
		name: "svc", path: script(t, `trap '' TERM; echo ready; while :; do sleep 0.05; done`),
		lines: prefixLines(out, "[svc] "), grace: grace, log: quietLogger(),
	})
	out.waitFor(t, "[svc] ready", 1, 10*time.Second)
	took := stop()
	if took < grace || took > grace+5*time.Second {
		t.Errorf("stopping took %v, want about the grace period %v", took, grace)
	}
}
