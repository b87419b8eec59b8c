package localstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// process is a server running as a child process, its output appended to
// a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed when the process has exited
	waitErr error         // valid once exited is closed
}

// startProcess starts cmd with its output appended to logPath. The child
// runs in its own process group (a terminal's Ctrl-C does not reach it; the
// owner stops it in order) and, on Linux, gets deathSignal when the caller
// dies. cred, when not nil, is the user the child runs as.
func startProcess(name string, cmd *exec.Cmd, logPath string, deathSignal syscall.Signal, cred *syscall.Credential) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("localstack: open %s log: %w", name, err)
	}
	defer logFile.Close() // the child holds its own descriptor
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = childAttr(deathSignal, cred)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("localstack: start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// waitReady calls probe until it succeeds, the process exits or ctx ends.
// A probe in flight is cancelled as soon as the process exits.
func (p *process) waitReady(ctx context.Context, probe func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		probeCtx, cancelProbe := context.WithTimeout(ctx, time.Second)
		err := probe(probeCtx)
		cancelProbe()
		if err == nil {
			return nil
		}
		select {
		case <-tick.C:
			continue
		case <-ctx.Done():
		}
		select {
		case <-p.exited:
			tail := p.logTail()
			return classifyExit(fmt.Errorf("%w: %s (%v); log %s:\n%s", ErrExited, p.name, p.waitErr, p.logPath, tail), tail)
		default:
			return fmt.Errorf("%w: %s did not answer (%v); log %s:\n%s", ErrNotReady, p.name, err, p.logPath, p.logTail())
		}
	}
}

// stop sends sig and waits for the process to exit; after stopTimeout it
// kills the process. It returns nil when the process exited on its own
// terms (status 0, or killed by the signal it was sent).
func (p *process) stop(sig syscall.Signal) error {
	select {
	case <-p.exited:
		return p.exitErr(sig)
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("localstack: signal %s: %w", p.name, err)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.exited:
		return p.exitErr(sig)
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("localstack: %s ignored %v for %s and was killed", p.name, sig, stopTimeout)
	}
}

// killGroup sends SIGKILL to the process's whole process group (the
// server and the children it forked) and waits for the process to exit.
func (p *process) killGroup() error {
	select {
	case <-p.exited:
		return p.exitErr(syscall.SIGKILL)
	default:
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("localstack: kill %s: %w", p.name, err)
	}
	<-p.exited
	return p.exitErr(syscall.SIGKILL)
}

func (p *process) exitErr(sig syscall.Signal) error {
	var exitErr *exec.ExitError
	if errors.As(p.waitErr, &exitErr) {
		if status, ok := exitErr.Sys().(syscall.WaitStatus); ok && status.Signaled() && status.Signal() == sig {
			return nil
		}
		return fmt.Errorf("localstack: %s exited: %w", p.name, p.waitErr)
	}
	return p.waitErr
}

// logTail returns the last lines of the process log, for error messages.
func (p *process) logTail() string {
	const maxLines = 20
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return strings.TrimSpace(string(bytes.Join(lines, []byte("\n"))))
}
