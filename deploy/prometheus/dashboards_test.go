// Package prometheus holds the tests of vigil's Prometheus alerting rules
// (alerts.yml) and Grafana dashboard (deploy/grafana/vigil.json) against
// the real promtool and Prometheus (Debian package prometheus, installed
// by make deps).
package prometheus

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
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
	"vigil.dev/pkg/health"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// need returns the path of a Prometheus binary. Without it the test is
// skipped on a developer's machine with how to install it, and fails in
// CI (CI=true), where make deps installs it.
func need(t *testing.T, binary string) string {
	t.Helper()
	path, err := exec.LookPath(binary)
	if err == nil {
		return path
	}
	msg := binary + " is not installed: run `make deps` (deploy/scripts/deps.sh installs Debian's prometheus package)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPED: " + msg)
	return ""
}

// repoFile is the absolute path of a file of the repository.
func repoFile(t *testing.T, rel string) string {
	t.Helper()
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, rel)
}

// TestAlertingRulesAreValid: promtool check rules accepts alerts.yml.
func TestAlertingRulesAreValid(t *testing.T) {
	promtool := need(t, "promtool")
	out, err := exec.Command(promtool, "check", "rules", repoFile(t, "deploy/prometheus/alerts.yml")).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool check rules: %s", out)
	}
}

// TestAlertingRulesFire runs the unit tests of alerts.yml in
// alerts_test.yml with promtool test rules: a symbol whose writes stop
// fires VigilFeedStale after 5 minutes (another symbol does not), also
// when its series ends with a feed restart and the new feed exports none
// (still firing 30 minutes later), failed
// commands fire VigilCommandFailures, a consumer 5000 behind fires
// VigilConsumerLag (one keeping up does not), a user's webhook backlog
// that never drains fires VigilWebhookBacklog after 10 minutes, across a
// hand-over between instances (notifications in flight now and then and a
// 4-minute outage do not).
func TestAlertingRulesFire(t *testing.T) {
	promtool := need(t, "promtool")
	cmd := exec.Command(promtool, "test", "rules", "alerts_test.yml")
	cmd.Dir = repoFile(t, "deploy/prometheus")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool test rules: %s", out)
	}
}

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	Title  string `json:"title"`
	Panels []struct {
		Title      string          `json:"title"`
		Datasource json.RawMessage `json:"datasource"`
		Targets    []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// readDashboard reads vigil.json and checks that every panel has a
// datasource and queries.
func readDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(repoFile(t, "deploy/grafana/vigil.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("vigil.json: %v", err)
	}
	if d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("vigil.json: title %q, %d panels", d.Title, len(d.Panels))
	}
	for _, p := range d.Panels {
		if p.Title == "" || len(p.Datasource) == 0 || len(p.Targets) == 0 {
			t.Fatalf("vigil.json: panel %q without a title, datasource or query", p.Title)
		}
		for _, q := range p.Targets {
			if q.Expr == "" || q.RefID == "" {
				t.Fatalf("vigil.json: panel %q has a query without expr or refId", p.Title)
			}
		}
	}
	return d
}

// liveSettings watch BTC-USD on the simulator with a live price rule that
// always holds, so alice gets candles, indicator updates and alerts at
// once, and notifies them to the webhook at %s (the backlog panel).
const liveSettings = `{"mode":"scalper-macdv","symbols":["BTC-USD"],"webhook":{"url":%q},"rules":{"scalper-macdv":[
	{"id":"price-live","symbol":"BTC-USD","timeframe":"1m","kind":"threshold","indicator":"price","op":"above","value":1,"evaluate":"live","cooldown":"1m"}]}}`

// services are the binaries the dashboard test runs, one instance each.
var services = []string{"vigil-feed", "vigil-indicators", "vigil-alerts", "vigil-control"}

// TestDashboardQueriesHaveData runs the four real services with their
// /metrics on the health endpoint and a real Prometheus scraping them
// every second with alerts.yml loaded, sends alice's commands (two that
// succeed, one rejected at intake), and runs every query of every panel of
// vigil.json ($__rate_interval as 10s): each returns data, and the
// command's latency is there for its command, alice's webhook backlog
// for her. Then vigil-indicators'
// /readyz follows its consumer (readinessFollowsTheConsumer).
func TestDashboardQueriesHaveData(t *testing.T) {
	need(t, "prometheus")
	d := readDashboard(t)
	began := time.Now()
	stack := testenv.NewStack(t)
	t.Logf("binaries built and servers up in %s", time.Since(began).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pool, err := db.NewPool(ctx, stack.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	t.Cleanup(hook.Close)
	if _, _, err := db.NewUsers(pool).SeedUser(ctx, "test", "alice", json.RawMessage(fmt.Sprintf(liveSettings, hook.URL)), "coinbase"); err != nil {
		t.Fatal(err)
	}
	var jobs []localstack.ScrapeJob
	health := map[string]string{}
	for _, svc := range services {
		addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(testenv.FreePort(t)))
		health[svc] = "http://" + addr
		stack.Start(svc, svc+"-1", "VIGIL_HEALTH_ADDR="+addr, "VIGIL_FEED_SOURCE=sim", "VIGIL_LOG_LEVEL=info")
		jobs = append(jobs, localstack.ScrapeJob{Name: svc, Targets: []string{addr}})
	}
	prom, err := localstack.StartPrometheus(ctx, localstack.Options{Dir: t.TempDir()}, localstack.PrometheusConfig{
		Jobs: jobs, ScrapeInterval: time.Second, RuleFiles: []string{repoFile(t, "deploy/prometheus/alerts.yml")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = prom.Stop() })
	t.Logf("services and Prometheus up after %s", time.Since(began).Round(time.Millisecond))

	nc := stack.Conn()
	results, err := nc.SubscribeSync("vigil.result.alice.>")
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []contract.Command{contract.CmdPause, contract.CmdResume} {
		reply, err := nc.Request(contract.CommandSubject("alice", cmd), []byte(`{}`), 30*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		var ack contract.Ack
		if err := json.Unmarshal(reply.Data, &ack); err != nil || !ack.Accepted {
			t.Fatalf("%s: ACK %s (%v)", cmd, reply.Data, err)
		}
		if _, err := results.NextMsg(30 * time.Second); err != nil {
			t.Fatalf("%s: no result: %v", cmd, err)
		}
	}
	// Rejected at intake: the dashboard's rejected rate has data.
	reply, err := nc.Request(contract.CommandSubject("alice", contract.CmdSwitchMode), []byte(`{"mode":""}`), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var rejected contract.Ack
	if err := json.Unmarshal(reply.Data, &rejected); err != nil || rejected.Accepted {
		t.Fatalf("switch-mode without a mode: ACK %s (%v), want rejected", reply.Data, err)
	}

	testenv.WaitFor(t, 90*time.Second, "Prometheus to have pause's latency from vigil-control", func() bool {
		return len(query(t, prom.URL(), `vigil_control_command_duration_seconds_count{command="pause",status="succeeded",job="vigil-control"}`)) > 0
	})
	t.Logf("commands answered, pause's latency scraped after %s", time.Since(began).Round(time.Millisecond))
	testenv.WaitFor(t, 90*time.Second, "Prometheus to have alice's webhook backlog from vigil-alerts", func() bool {
		return len(query(t, prom.URL(), `vigil_alerts_webhook_pending{user="alice",job="vigil-alerts"}`)) > 0
	})
	for _, p := range d.Panels {
		for _, q := range p.Targets {
			expr := strings.ReplaceAll(q.Expr, "$__rate_interval", "10s")
			testenv.WaitFor(t, 90*time.Second, fmt.Sprintf("data for panel %q query %s: %s", p.Title, q.RefID, expr), func() bool {
				return len(query(t, prom.URL(), expr)) > 0
			})
		}
		t.Logf("panel %q has data after %s", p.Title, time.Since(began).Round(time.Millisecond))
	}
	readinessFollowsTheConsumer(ctx, t, nc, health["vigil-indicators"])
}

// readinessFollowsTheConsumer deletes the candle stream under the running
// vigil-indicators: its /readyz turns 503 naming the check "consumer"
// (the consumer is lost and cannot be recreated), then 200 again once the
// stream is back.
func readinessFollowsTheConsumer(ctx context.Context, t *testing.T, nc *nats.Conn, base string) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	readyz := func() (int, health.Report) {
		var r health.Report
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return 0, r
		}
		defer resp.Body.Close()
		_ = json.NewDecoder(resp.Body).Decode(&r)
		return resp.StatusCode, r
	}
	testenv.WaitFor(t, 30*time.Second, "vigil-indicators ready with its consumer", func() bool {
		code, r := readyz()
		return code == http.StatusOK && r.Checks["consumer"] == "ok"
	})
	if err := js.DeleteStream(ctx, contract.StreamCandles); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "vigil-indicators not ready, naming its consumer, with the candle stream gone", func() bool {
		code, r := readyz()
		return code == http.StatusServiceUnavailable && r.Checks["consumer"] != "ok" && r.Checks["consumer"] != ""
	})
	_, r := readyz()
	t.Logf("/readyz with the consumer lost: %v", r.Checks)
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 60*time.Second, "vigil-indicators ready again once the stream is back", func() bool {
		code, r := readyz()
		return code == http.StatusOK && r.Checks["consumer"] == "ok"
	})
}

// sample is one element of an instant query's result vector.
type sample struct {
	Metric map[string]string `json:"metric"`
	Value  []any             `json:"value"`
}

// query runs an instant PromQL query and returns its vector (nil when the
// query fails to run, e.g. while Prometheus starts; a bad query fails the
// test).
func query(t *testing.T, base, expr string) []sample {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var body struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string   `json:"resultType"`
			Result     []sample `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("query %s: %v", expr, err)
	}
	if body.Status != "success" {
		if body.ErrorType == "bad_data" {
			t.Fatalf("query %s: %s", expr, body.Error)
		}
		return nil
	}
	return body.Data.Result
}
