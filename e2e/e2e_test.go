// Package e2e runs the real vigil binaries together against real NATS,
// Redis and PostgreSQL servers, as an operator would.
package e2e

import (
	"os"
	"testing"
	"time"

	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

var services = []string{"vigil-feed", "vigil-indicators", "vigil-alerts", "vigil-control"}

// TestEveryServiceRegisters starts one instance of each service and checks
// that $SRV.PING finds all four, then that a clean stop removes them.
func TestEveryServiceRegisters(t *testing.T) {
	stack := testenv.NewStack(t)
	procs := map[string]*testenv.Proc{}
	for _, svc := range services {
		procs[svc] = stack.Start(svc, svc+"-1")
	}
	for _, svc := range services {
		if ids := stack.Instances(svc); len(ids) != 1 || ids[svc+"-1"] == "" {
			t.Fatalf("%s instances: %v", svc, ids)
		}
	}
	for _, svc := range services {
		procs[svc].Stop()
		if exited, err := procs[svc].Exited(); !exited || err != nil {
			t.Fatalf("%s did not stop cleanly: exited=%v err=%v\n%s", svc, exited, err, procs[svc].Tail(20))
		}
	}
	testenv.WaitFor(t, 5*time.Second, "instances gone", func() bool {
		for _, svc := range services {
			if len(stack.Instances(svc)) != 0 {
				return false
			}
		}
		return true
	})
}
