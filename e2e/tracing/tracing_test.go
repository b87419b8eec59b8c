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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// jaeger is a running Jaeger v2 with span metrics, and the Prometheus
// that scrapes them and that Jaeger's metrics API reads.
type jaeger struct {
	queryURL, otlpURL, prometheusURL string
}

// startJaeger runs the binary built by deploy/scripts/jaeger.sh (make deps)
// with in-memory storage, OTLP/HTTP in, the query API out and span metrics
// (localstack.JaegerConfig), and a real Prometheus scraping the span
// metrics every second.
func startJaeger(t *testing.T) jaeger {
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
	addr := func() string { return fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) }
	spanMetrics := addr()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	prom, err := localstack.StartPrometheus(ctx, localstack.Options{Dir: t.TempDir()}, localstack.PrometheusConfig{
		Jobs: []localstack.ScrapeJob{{Name: "jaeger-spanmetrics", Targets: []string{spanMetrics}}}, ScrapeInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = prom.Stop() })
	jc := localstack.JaegerConfig{OTLPHTTPAddr: addr(), QueryHTTPAddr: addr(), QueryGRPCAddr: addr(),
		SpanMetricsAddr: spanMetrics, PrometheusURL: prom.URL(), SpanMetricsFlush: time.Second}
	yaml, err := jc.YAML()
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
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
	j := jaeger{queryURL: "http://" + jc.QueryHTTPAddr, otlpURL: "http://" + jc.OTLPHTTPAddr, prometheusURL: prom.URL()}
	testenv.WaitFor(t, 60*time.Second, "jaeger query API", func() bool {
		resp, err := http.Get(j.queryURL + "/api/services")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return j
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

// runCommand sends tracy's cmd, waits for its result and fails the test
// unless it succeeded.
func runCommand(ctx context.Context, t *testing.T, nc *nats.Conn, cmd contract.Command) contract.Result {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request(contract.CommandSubject("tracy", cmd), []byte(`{}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ack contract.Ack
	if err := json.Unmarshal(msg.Data, &ack); err != nil || !ack.Accepted {
		t.Fatalf("%s not accepted: %s %v", cmd, msg.Data, err)
	}
	var result contract.Result
	results, err := js.Stream(ctx, contract.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the "+string(cmd)+" result", func() bool {
		m, err := results.GetLastMsgForSubject(ctx, contract.ResultSubject("tracy", ack.ID))
		return err == nil && json.Unmarshal(m.Data, &result) == nil
	})
	if result.Status != contract.StatusSucceeded {
		t.Fatalf("%s result %+v", cmd, result)
	}
	return result
}

// TestPauseIsOneTraceAndMonitored sends a pause and asserts that its trace
// holds spans of all four services, that every service's handler span is
// a child of a span of vigil-control, and that the whole tree hangs from
// one root. Then Jaeger's metrics API (the Monitor tab's) shows the
// services' call rate, latency and error rate (monitorShowsServices).
func TestPauseIsOneTraceAndMonitored(t *testing.T) {
	j := startJaeger(t)
	queryURL, otlpURL := j.queryURL, j.otlpURL
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

	result := runCommand(ctx, t, stack.Conn(), contract.CmdPause)
	if result.TraceID == "" {
		t.Fatalf("result %+v without a trace id", result)
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
	if t.Failed() {
		return
	}
	monitorShowsServices(ctx, t, j, stack.Conn())
}
