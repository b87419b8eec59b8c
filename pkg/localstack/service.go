package localstack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// ErrServiceStart reports a service process that exited, or did not answer
// $SRV.PING, at start.
var ErrServiceStart = errors.New("localstack: service did not start")

// ServiceOptions describe one vigil service process.
type ServiceOptions struct {
	// Binary is the executable; Service its micro service name
	// (vigil-feed, ...); Instance its VIGIL_INSTANCE.
	Binary, Service, Instance string
	// Env is the process's whole environment (VIGIL_INSTANCE is added).
	Env []string
	// LogPath receives the process's stdout and stderr.
	LogPath string
	// RegisterTimeout bounds the wait for $SRV.PING (default 90 s).
	RegisterTimeout time.Duration
	// NetNS, when set, runs the binary in that network namespace
	// (ip netns exec), as on another host.
	NetNS string
}

// ServiceProcess is a running vigil service instance, as tests and the
// benchmark runner start them.
type ServiceProcess struct {
	Service, Instance string
	// ID is the instance's micro service id.
	ID string

	cmd     *exec.Cmd
	log     string
	done    chan struct{}
	exitErr error
}

// StartService runs opts.Binary and waits until the instance answers
// $SRV.PING on nc. The process is killed if its parent dies.
func StartService(ctx context.Context, nc *nats.Conn, opts ServiceOptions) (*ServiceProcess, error) {
	if opts.RegisterTimeout <= 0 {
		opts.RegisterTimeout = 90 * time.Second
	}
	// Appended to: a service started again after a kill keeps the
	// earlier run's lines.
	logFile, err := os.OpenFile(opts.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("localstack: %w", err)
	}
	cmd := exec.Command(opts.Binary)
	if opts.NetNS != "" {
		cmd = exec.Command("ip", "netns", "exec", opts.NetNS, opts.Binary)
	}
	cmd.Env = append(opts.Env, "VIGIL_INSTANCE="+opts.Instance)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("localstack: start %s: %w", opts.Service, err)
	}
	p := &ServiceProcess{Service: opts.Service, Instance: opts.Instance, cmd: cmd, log: opts.LogPath, done: make(chan struct{})}
	go func() {
		p.exitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	deadline := time.Now().Add(opts.RegisterTimeout)
	for {
		if id := ServiceInstances(nc, opts.Service)[opts.Instance]; id != "" {
			p.ID = id
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%w: %s exited: %v\n%s", ErrServiceStart, opts.Instance, p.exitErr, p.Tail(30))
		case <-ctx.Done():
			p.Kill()
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			p.Kill()
			return nil, fmt.Errorf("%w: %s did not register within %s\n%s", ErrServiceStart, opts.Instance, opts.RegisterTimeout, p.Tail(30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ServiceInstances lists the micro service ids of service's live instances
// by instance name (metadata "instance"), as $SRV.PING finds them.
func ServiceInstances(nc *nats.Conn, service string) map[string]string {
	out := map[string]string{}
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return out
	}
	defer sub.Unsubscribe() //nolint:errcheck // best effort
	if err := nc.PublishRequest("$SRV.PING."+service, inbox, nil); err != nil {
		return out
	}
	for {
		msg, err := sub.NextMsg(250 * time.Millisecond)
		if err != nil {
			return out
		}
		var ping micro.Ping
		if json.Unmarshal(msg.Data, &ping) == nil {
			out[ping.Metadata["instance"]] = ping.ID
		}
	}
}

// Stop sends SIGTERM and waits for the exit, killing the process after
// timeout. The error names the instance when the exit was not clean.
func (p *ServiceProcess) Stop(timeout time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("localstack: %s ignored SIGTERM for %s and was killed", p.Instance, timeout)
	}
	if p.exitErr != nil {
		return fmt.Errorf("localstack: %s exited: %w\n%s", p.Instance, p.exitErr, p.Tail(10))
	}
	return nil
}

// Kill kills the process at once (no clean shutdown) and waits for it.
func (p *ServiceProcess) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Exited reports whether the process has ended, with its exit error.
func (p *ServiceProcess) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.exitErr
	default:
		return false, nil
	}
}

// PID is the process id.
func (p *ServiceProcess) PID() int { return p.cmd.Process.Pid }

// Log is the whole output of the process so far.
func (p *ServiceProcess) Log() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// Tail is the last n lines of the process's output.
func (p *ServiceProcess) Tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
