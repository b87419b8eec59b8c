package tracing

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// metricFamily is the part of an answer of Jaeger's metrics API
// (/api/metrics/{calls,latencies,errors}) the test reads.
type metricFamily struct {
	Metrics []struct {
		Labels []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"labels"`
		MetricPoints []struct {
			GaugeValue struct {
				// DoubleValue is a number, or "NaN" (a quantile of no calls).
				DoubleValue json.RawMessage `json:"doubleValue"`
			} `json:"gaugeValue"`
		} `json:"metricPoints"`
	} `json:"metrics"`
}

// spanMetric asks Jaeger's metrics API for kind (calls, latencies,
// errors) of service's spans of spanKind, the way the Monitor tab does
// (the last 5 minutes, rates over 10 minutes), and returns the newest
// finite value of the service's series; ok is false when it has none.
func spanMetric(queryURL, kind, service, spanKind string) (value float64, ok bool, err error) {
	q := url.Values{"service": {service}, "spanKind": {spanKind}, "lookback": {"300000"}, "step": {"5000"}, "ratePer": {"600000"}}
	if kind == "latencies" {
		q.Set("quantile", "0.95")
	}
	resp, err := http.Get(queryURL + "/api/metrics/" + kind + "?" + q.Encode())
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, false, fmt.Errorf("/api/metrics/%s: status %d", kind, resp.StatusCode)
	}
	var mf metricFamily
	if err := json.NewDecoder(resp.Body).Decode(&mf); err != nil {
		return 0, false, fmt.Errorf("/api/metrics/%s: %w", kind, err)
	}
	for _, m := range mf.Metrics {
		if !hasLabel(m.Labels, "service_name", service) {
			continue
		}
		for _, p := range m.MetricPoints {
			v, err := strconv.ParseFloat(strings.Trim(string(p.GaugeValue.DoubleValue), `"`), 64)
			if err == nil && !math.IsNaN(v) && !math.IsInf(v, 0) {
				value, ok = v, true
			}
		}
	}
	return value, ok, nil
}

// hasLabel reports whether labels hold name=value.
func hasLabel(labels []struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}, name, value string) bool {
	for _, l := range labels {
		if l.Name == name && l.Value == value {
			return true
		}
	}
	return false
}

// monitorShowsServices checks the data of Jaeger's Monitor tab (service
// performance monitoring): the spans of the pause went through Jaeger's
// spanmetrics connector into Prometheus; once the call counters of every
// service are there, a resume and another pause make them grow, and Jaeger's metrics API
// (reading that Prometheus) shows for each of the four services a
// positive call rate of its server spans and their 95th percentile
// latency, and an error rate of 0 for vigil-control; vigil-indicators'
// candle consumer spans have a call rate of their own.
func monitorShowsServices(ctx context.Context, t *testing.T, j jaeger, nc *nats.Conn) {
	services := []string{"vigil-control", "vigil-feed", "vigil-indicators", "vigil-alerts"}
	began := time.Now()
	// A counter's first sample gives no rate, and each span name has
	// counters of its own: wait for the pause's counters, then resume and
	// pause again to add to them.
	testenv.WaitFor(t, 60*time.Second, "the pause's span metrics of every service in Prometheus", func() bool {
		for _, svc := range services {
			if _, ok, _ := spanMetric(j.queryURL, "calls", svc, "server"); !ok {
				return false
			}
		}
		return true
	})
	t.Logf("span metrics of the pause in Prometheus after %s", time.Since(began).Round(time.Millisecond))
	runCommand(ctx, t, nc, contract.CmdResume)
	runCommand(ctx, t, nc, contract.CmdPause)
	values := map[string]float64{}
	for _, svc := range services {
		for _, kind := range []string{"calls", "latencies"} {
			testenv.WaitFor(t, 60*time.Second, fmt.Sprintf("Jaeger's metrics API to show %s of %s's server spans", kind, svc), func() bool {
				v, ok, err := spanMetric(j.queryURL, kind, svc, "server")
				if err != nil {
					t.Logf("%v", err)
				}
				values[svc+" "+kind] = v
				return ok && v > 0
			})
		}
	}
	errorRate, ok, err := spanMetric(j.queryURL, "errors", "vigil-control", "server")
	if err != nil || !ok || errorRate != 0 {
		t.Errorf("vigil-control's error rate: %v (ok %v, err %v), want 0", errorRate, ok, err)
	}
	// The consumer's counter needs two samples with candles between them
	// before it has a rate.
	var consumed float64
	testenv.WaitFor(t, 90*time.Second, "a call rate of vigil-indicators' candle consumer spans", func() bool {
		v, ok, err := spanMetric(j.queryURL, "calls", "vigil-indicators", "consumer")
		if err != nil {
			t.Logf("%v", err)
		}
		consumed = v
		return ok && v > 0
	})
	t.Logf("Monitor data after %s: %v, vigil-control error rate %v, vigil-indicators consumer calls/s %.3f",
		time.Since(began).Round(time.Millisecond), values, errorRate, consumed)
}
