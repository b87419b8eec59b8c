package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Restart backoff of a child that exits on its own.
const (
	firstRestartDelay = time.Second
	maxRestartDelay   = 30 * time.Second
	// stableRun is how long a child must run for its backoff to reset.
	stableRun = 30 * time.Second
)

// child is a service binary the dev stack runs and restarts.
type child struct {
	name  string        // the service's short name, e.g. "feed"
	path  string        // the binary
	args  []string      // its arguments
	env   []string      // its whole environment
	lines func([]byte)  // gets each line of its output (stdout and stderr), without the newline
	grace time.Duration // how long it may take to stop after SIGTERM
	log   *slog.Logger
}

// supervise runs c until ctx ends, restarting it with backoff whenever it
// exits on its own. When ctx ends it sends the child SIGTERM, kills it
// after c.grace, and returns once it has exited.
func supervise(ctx context.Context, c child) {
	delay := firstRestartDelay
	for {
		started := time.Now()
		err := c.runOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		ran := time.Since(started)
		if ran >= stableRun {
			delay = firstRestartDelay
		}
		c.log.Warn("service exited; restarting", "process", c.name, "err", err, "ran", ran.Round(time.Millisecond), "restart_in", delay)
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		delay = min(2*delay, maxRestartDelay)
	}
}

// runOnce runs the child until it exits or ctx ends.
func (c child) runOnce(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, c.path, c.args...)
	cmd.Env = c.env
	out := &lineWriter{emit: c.lines}
	defer out.Flush()
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = childAttr()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = c.grace
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.path, err)
	}
	c.log.Info("service started", "process", c.name, "pid", cmd.Process.Pid)
	err := cmd.Wait()
	if ctx.Err() != nil {
		if errors.Is(err, exec.ErrWaitDelay) || isKilled(err) {
			c.log.Warn("service did not stop in time and was killed", "process", c.name, "grace", c.grace)
		} else {
			c.log.Info("service stopped", "process", c.name)
		}
	}
	return err
}

// isKilled reports whether err says the process died of SIGKILL.
func isKilled(err error) bool {
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		return false
	}
	status, ok := exitErr.Sys().(syscall.WaitStatus)
	return ok && status.Signaled() && status.Signal() == syscall.SIGKILL
}

// lineWriter calls emit with each complete line written to it, without
// the newline, one line at a time.
type lineWriter struct {
	emit func([]byte)
	mu   sync.Mutex
	buf  []byte // the unfinished last line
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.emit(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

// Flush emits an unfinished last line.
func (w *lineWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.emit(w.buf)
		w.buf = nil
	}
}

// prefixLines returns a line handler that writes each line to out with
// prefix in front and a newline, in one Write (out must serialize its
// Writes when several children share it).
func prefixLines(out io.Writer, prefix string) func([]byte) {
	return func(line []byte) {
		_, _ = out.Write(append(append([]byte(prefix), line...), '\n'))
	}
}

// syncWriter serializes Writes to an io.Writer shared by several children.
type syncWriter struct {
	mu  sync.Mutex
	out io.Writer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.Write(p)
}
