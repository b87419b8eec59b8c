package stack

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"vigil.dev/pkg/localstack"
)

// FakeExchange is the fake Coinbase server (the feed's fakecoinbase
// package behind a small main, see Overlay) running as a process.
type FakeExchange struct {
	// RESTURL and WebSocketURL are where it serves.
	RESTURL, WebSocketURL string

	cmd  *exec.Cmd
	done chan struct{}
}

// StartFakeExchange runs the fake with args (-products, -minutes, -bars),
// its stderr in dir, and waits for the URLs it prints.
func StartFakeExchange(ctx context.Context, bins *Binaries, dir string, args ...string) (*FakeExchange, error) {
	logFile, err := os.Create(filepath.Join(dir, "fakecoinbase.log"))
	if err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(bins.Path(FakeCoinbase), args...)
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("stack: start fake exchange: %w", err)
	}
	f := &FakeExchange{cmd: cmd, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		if s.Scan() {
			lines <- s.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout) // keep the pipe drained
	}()
	go func() {
		_ = cmd.Wait()
		close(f.done)
	}()
	select {
	case line, ok := <-lines:
		var urls struct{ REST, WS string }
		if !ok || json.Unmarshal([]byte(line), &urls) != nil || urls.REST == "" {
			f.Stop()
			return nil, fmt.Errorf("%w: fake exchange printed %q; see %s", localstack.ErrServiceStart, line, logFile.Name())
		}
		f.RESTURL, f.WebSocketURL = urls.REST, urls.WS
		return f, nil
	case <-time.After(time.Minute):
	case <-ctx.Done():
	}
	f.Stop()
	return nil, fmt.Errorf("%w: fake exchange did not print its URLs within a minute", localstack.ErrServiceStart)
}

// Stop ends the fake with SIGTERM and waits for it.
func (f *FakeExchange) Stop() {
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.done:
	case <-time.After(10 * time.Second):
		_ = f.cmd.Process.Kill()
		<-f.done
	}
}
