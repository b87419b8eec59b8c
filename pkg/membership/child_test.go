package membership_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/testenv"
)

// The environment that makes this test binary run a standalone
// nats-server (childNATS) instead of the tests: its store directory and
// port.
const (
	childNATSDir  = "VIGIL_MEMBERSHIP_TEST_NATS_DIR"
	childNATSPort = "VIGIL_MEMBERSHIP_TEST_NATS_PORT"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(childNATSDir); dir != "" {
		os.Exit(childNATS(dir, os.Getenv(childNATSPort)))
	}
	os.Exit(testenv.Run(m))
}

// childNATS runs a nats-server with JetStream and a file store in dir on
// port until the process is killed.
func childNATS(dir, port string) int {
	p, err := strconv.Atoi(port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child nats-server: port:", err)
		return 2
	}
	if _, err := localstack.StartNATS(context.Background(), localstack.Options{Dir: dir, Port: p}); err != nil {
		fmt.Fprintln(os.Stderr, "child nats-server:", err)
		return 1
	}
	select {}
}

// natsProcess is a nats-server in a process of its own (this test binary
// run as childNATS), so a test can kill it with SIGKILL: nothing is
// flushed, nothing is shut down.
type natsProcess struct {
	cmd  *exec.Cmd
	port int
}

// startNATSProcess starts a nats-server process with its file store in
// dir on port and waits until it accepts connections.
func startNATSProcess(t *testing.T, dir string, port int) *natsProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childNATSDir+"="+dir, childNATSPort+"="+strconv.Itoa(port))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &natsProcess{cmd: cmd, port: port}
	t.Cleanup(p.kill)
	testenv.WaitFor(t, time.Minute, "the nats-server process to accept connections", func() bool {
		c, err := net.DialTimeout("tcp", p.addr(), time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return p
}

func (p *natsProcess) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

// URL is the server's client URL.
func (p *natsProcess) URL() string { return "nats://" + p.addr() }

// kill kills the server with SIGKILL (kill -9) and waits until it is gone.
func (p *natsProcess) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Wait()
}
