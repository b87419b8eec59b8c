// Package tracing checks, against a real Jaeger, that one operator command
// is one OpenTelemetry trace across every vigil service.
package tracing

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// jaegerConfig runs Jaeger v2 with in-memory storage, OTLP/HTTP in and the
// query API out, on ports of the test's choosing.
const jaegerConfig = `
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:%d
    grpc:
      endpoint: 127.0.0.1:%d
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:%d
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`

// startJaeger runs the binary built by deploy/scripts/jaeger.sh (make deps)
// and returns its query URL and OTLP endpoint.
func startJaeger(t *testing.T) (queryURL, otlpURL string) {
	t.Helper()
	bin := os.Getenv("JAEGER_BIN")
	if bin == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(cache, "vigil", "jaeger-v1.76.0")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Jaeger is not built (%v): run `make deps` (deploy/scripts/jaeger.sh builds and caches it)", err)
	}
	queryPort, grpcPort, otlpPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	cfg := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, jaegerConfig, queryPort, grpcPort, otlpPort), 0o644); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd := exec.Command(bin, "--config", cfg)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("jaeger output:\n%s", out.String())
		}
	})
	queryURL = fmt.Sprintf("http://127.0.0.1:%d", queryPort)
	testenv.WaitFor(t, 60*time.Second, "jaeger query API", func() bool {
		resp, err := http.Get(queryURL + "/api/services")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return queryURL, fmt.Sprintf("http://127.0.0.1:%d", otlpPort)
}

// jaegerTrace is the part of Jaeger's /api/traces/<id> answer the test reads.
type jaegerTrace struct {
	Data []struct {
		Spans []struct {
			SpanID        string `json:"spanID"`
			OperationName string `json:"operationName"`
			ProcessID     string `json:"processID"`
			References    []struct {
				RefType string `json:"refType"`
				SpanID  string `json:"spanID"`
			} `json:"references"`
		} `json:"spans"`
		Processes map[string]struct {
			ServiceName string `json:"serviceName"`
		} `json:"processes"`
	} `json:"data"`
}

// span is one span of the trace with its service and parent.
type span struct{ id, op, service, parent string }

func fetchTrace(queryURL, traceID string) ([]span, error) {
	resp, err := http.Get(queryURL + "/api/traces/" + traceID)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	var tr jaegerTrace
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
		return nil, err
	}
	var spans []span
	for _, d := range tr.Data {
		for _, s := range d.Spans {
			sp := span{id: s.SpanID, op: s.OperationName, service: d.Processes[s.ProcessID].ServiceName}
			for _, r := range s.References {
				if r.RefType == "CHILD_OF" {
					sp.parent = r.SpanID
				}
			}
			spans = append(spans, sp)
		}
	}
	return spans, nil
}

const settings = `{"mode":"position-monitor","symbols":["BTC-USD"]}`

// TestPauseIsOneTrace sends a pause and asserts that its trace holds spans
// of all four services, that every service's handler span is a child of a
// span of vigil-control, and that the whole tree hangs from one root.
func TestPauseIsOneTrace(t *testing.T) {
	queryURL, otlpURL := startJaeger(t)
	stack := testenv.NewStack(t)
	stack.Env = append(stack.Env,
		"OTEL_EXPORTER_OTLP_ENDPOINT="+otlpURL,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_METRICS_EXPORTER=none",
		"OTEL_BSP_SCHEDULE_DELAY=100",
		"VIGIL_FEED_SOURCE=sim",
	)
	ctx := context.Background()
	pool, err := db.NewPool(ctx, stack.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, _, err := db.NewUsers(pool).SeedUser(ctx, "test", "tracy", json.RawMessage(settings), "coinbase"); err != nil {
		t.Fatal(err)
	}
	for _, svc := range []string{"vigil-feed", "vigil-indicators", "vigil-alerts", "vigil-control"} {
		stack.Start(svc, svc+"-1")
	}

	js, err := jetstream.New(stack.Conn())
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stack.Conn().Request(contract.CommandSubject("tracy", contract.CmdPause), []byte(`{}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ack contract.Ack
	if err := json.Unmarshal(msg.Data, &ack); err != nil || !ack.Accepted {
		t.Fatalf("pause not accepted: %s %v", msg.Data, err)
	}
	var result contract.Result
	results, err := js.Stream(ctx, contract.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the pause result", func() bool {
		m, err := results.GetLastMsgForSubject(ctx, contract.ResultSubject("tracy", ack.ID))
		return err == nil && json.Unmarshal(m.Data, &result) == nil
	})
	if result.Status != contract.StatusSucceeded || result.TraceID == "" {
		t.Fatalf("result %+v", result)
	}

	want := []string{"vigil-control", "vigil-alerts", "vigil-feed", "vigil-indicators"}
	var spans []span
	// Spans reach Jaeger in batches from four processes, control's own
	// (which end last) possibly after the others': wait for all four
	// services and for every parent to be in the trace.
	testenv.WaitFor(t, 30*time.Second, "a complete trace of all four services in Jaeger", func() bool {
		spans, err = fetchTrace(queryURL, result.TraceID)
		if err != nil {
			return false
		}
		seen, ids := map[string]bool{}, map[string]bool{}
		for _, s := range spans {
			seen[s.service], ids[s.id] = true, true
		}
		for _, w := range want {
			if !seen[w] {
				return false
			}
		}
		for _, s := range spans {
			if s.parent != "" && !ids[s.parent] {
				return false
			}
		}
		return true
	})

	byID := map[string]span{}
	for _, s := range spans {
		byID[s.id] = s
	}
	roots := 0
	handlers := map[string]bool{}
	for _, s := range spans {
		if s.parent == "" {
			roots++
			if s.service != "vigil-control" {
				t.Errorf("root span %q is from %s, want vigil-control", s.op, s.service)
			}
			continue
		}
		parent, ok := byID[s.parent]
		if !ok {
			t.Errorf("span %s/%q has a parent %s outside the trace", s.service, s.op, s.parent)
			continue
		}
		// A service's handler span hangs from control's request to it.
		if s.service != "vigil-control" && parent.service == "vigil-control" {
			handlers[s.service] = true
		}
	}
	if roots != 1 {
		t.Errorf("the trace has %d roots, want 1", roots)
	}
	for _, svc := range want[1:] {
		if !handlers[svc] {
			t.Errorf("no span of %s is a child of a vigil-control span", svc)
		}
	}
	if t.Failed() || testing.Verbose() {
		for _, s := range spans {
			t.Logf("%s %q id=%s parent=%s", s.service, s.op, s.id, s.parent)
		}
	}
}
