package daemon_test

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
)

// step names a step as "<service>.<verb>".
func stepNames(steps []contract.Step) []string {
	out := []string{}
	for _, s := range steps {
		out = append(out, strings.TrimPrefix(s.Service, "vigil-")+"."+string(s.Verb))
	}
	return out
}

// callRuns groups a command's calls, in arrival order, into runs of the same
// service and verb: a run per step when steps never overlap.
func callRuns(e *env, id string) (names []string, sizes []int) {
	for _, c := range e.rec.For(id) {
		name := string(c.Service) + "." + string(c.Verb)
		if len(names) > 0 && names[len(names)-1] == name {
			sizes[len(sizes)-1]++
			continue
		}
		names, sizes = append(names, name), append(sizes, 1)
	}
	return names, sizes
}

// TestCommandsSucceed runs every command through its sequence against
// three instances of each service: the result is in VIGIL_RESULTS and in
// command_log, every step was confirmed by all three instances before the
// next began, the desired state moved as specified, and each command is one
// trace across control and the services.
func TestCommandsSucceed(t *testing.T) {
	e := newEnv(t, 3)
	ctl := e.startControl("c1", testSettings(), 0)
	alice := e.users["alice"]
	// Two keys clear-cache must delete, one of bob it must keep.
	store := redisstore.New(e.rdb, 0)
	for _, s := range []contract.SeriesID{
		{User: "alice", UserID: alice.id, ExchangeID: alice.exchange, Symbol: "BTC-USD", Timeframe: contract.TF1h},
		{User: "alice", UserID: alice.id, ExchangeID: alice.exchange, Symbol: "BTC-USD", Timeframe: contract.TF4h},
		{User: "bob", UserID: e.users["bob"].id, ExchangeID: e.users["bob"].exchange, Symbol: "BTC-USD", Timeframe: contract.TF1h},
	} {
		c := contract.Candle{SeriesID: s, Start: 1767225600, Open: 1, High: 2, Low: 1, Close: 2, Volume: 1, Version: 1}
		if _, err := store.WriteCandle(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	pause := []string{"alerts.pause", "feed.pause", "indicators.pause"}
	resume := []string{"indicators.resume", "feed.resume", "alerts.resume"}
	apply := []string{"feed.apply", "indicators.apply", "alerts.apply"}
	tests := []struct {
		name, command, body string
		steps               []string
		result              map[string]any
		paused              bool
		mode                contract.Mode
		symbols             []string
		revision            int64
	}{
		{"pause", "pause", "", pause, map[string]any{"status": "paused"}, true, contract.ModePositionMonitor, []string{"BTC-USD", "ETH-USD"}, 1},
		{"pause again", "pause", "{}", []string{}, map[string]any{"status": "already_paused"}, true, contract.ModePositionMonitor, []string{"BTC-USD", "ETH-USD"}, 1},
		{"resume", "resume", "{}", resume, map[string]any{"status": "resumed", "symbols": []any{"BTC-USD", "ETH-USD"},
			"gap_filled": map[string]any{"BTC-USD": map[string]any{"1m": 3.0}}}, false, contract.ModePositionMonitor, []string{"BTC-USD", "ETH-USD"}, 1},
		{"resume again", "resume", "{}", []string{}, map[string]any{"status": "already_running", "symbols": []any{"BTC-USD", "ETH-USD"}},
			false, contract.ModePositionMonitor, []string{"BTC-USD", "ETH-USD"}, 1},
		{"resume with symbols", "resume", `{"symbols":["BTC-USD","SOL-USD"]}`, resume, map[string]any{"status": "resumed",
			"symbols": []any{"BTC-USD", "SOL-USD"}, "gap_filled": map[string]any{"BTC-USD": map[string]any{"1m": 3.0}}},
			false, contract.ModePositionMonitor, []string{"BTC-USD", "SOL-USD"}, 2},
		{"reload-settings", "reload-settings", "", apply, map[string]any{"reloaded": true, "revision": 3.0, "changes": map[string]any{
			"symbols": map[string]any{"added": []any{"ETH-USD"}, "removed": []any{"SOL-USD"}},
			"rules":   map[string]any{"before": 1.0, "after": 1.0}, "indicators": []any{}}},
			false, contract.ModePositionMonitor, []string{"BTC-USD", "ETH-USD"}, 3},
		{"switch-mode", "switch-mode", `{"mode":"scalper-macdv"}`, []string{"alerts.pause", "feed.apply", "indicators.apply", "alerts.apply", "alerts.resume"},
			map[string]any{"switched": true, "from": "position-monitor", "to": "scalper-macdv"}, false, contract.ModeScalperMACDV, []string{"BTC-USD", "ETH-USD"}, 4},
		{"switch-mode same", "switch-mode", `{"mode":"scalper-macdv"}`, []string{},
			map[string]any{"switched": false, "status": "already_in_mode", "mode": "scalper-macdv"}, false, contract.ModeScalperMACDV, []string{"BTC-USD", "ETH-USD"}, 4},
		{"force-backfill", "force-backfill", `{"symbol":"BTC-USD","timeframes":["1h","4h"],"to":"2026-01-01T00:00:00Z"}`,
			[]string{"feed.backfill", "indicators.recompute", "feed.backfill", "indicators.recompute"},
			map[string]any{"backfilled": true, "symbol": "BTC-USD", "candles": map[string]any{"1h": 1000.0, "4h": 1000.0}},
			false, contract.ModeScalperMACDV, []string{"BTC-USD", "ETH-USD"}, 4},
		{"clear-cache", "clear-cache", `{"scope":"symbol","symbol":"BTC-USD"}`, []string{"indicators.forget"},
			map[string]any{"cleared": true, "scope": "symbol", "symbol": "BTC-USD", "exchange": float64(alice.exchange), "deletedCount": 2.0},
			false, contract.ModeScalperMACDV, []string{"BTC-USD", "ETH-USD"}, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ack := e.accept("alice", tc.command, tc.body)
			if ack.User != "alice" || ack.Command != contract.Command(tc.command) || ack.Position != 0 {
				t.Errorf("ack = %+v", ack)
			}
			r := e.result("alice", ack.ID)
			if r.Status != contract.StatusSucceeded || r.Error != nil {
				t.Fatalf("status %s, error %+v", r.Status, r.Error)
			}
			if got := stepNames(r.Steps); !slices.Equal(got, tc.steps) {
				t.Errorf("steps = %v, want %v", got, tc.steps)
			}
			for _, s := range r.Steps {
				if s.Instances != 3 || s.Acked != 3 || len(s.Missing) != 0 {
					t.Errorf("step %s.%s: instances %d acked %d missing %v", s.Service, s.Verb, s.Instances, s.Acked, s.Missing)
				}
				answered := 0
				for _, o := range s.Outcomes {
					if o.Outcome == contract.InstanceAnswered && o.Error == nil {
						answered++
					}
				}
				if answered != 3 || len(s.Outcomes) != 3 || s.Compensation {
					t.Errorf("step %s.%s: outcomes %+v compensation %v, want 3 answered", s.Service, s.Verb, s.Outcomes, s.Compensation)
				}
			}
			names, sizes := callRuns(e, ack.ID)
			if !slices.Equal(names, tc.steps) {
				t.Errorf("calls in order = %v, want %v", names, tc.steps)
			}
			for i, n := range sizes {
				if n != 3 {
					t.Errorf("step %s reached %d instances before the next step, want 3", names[i], n)
				}
			}
			if got := decode[map[string]any](t, r.Result); !reflect.DeepEqual(got, tc.result) {
				t.Errorf("result = %v\nwant     %v", got, tc.result)
			}
			if r.AcceptedAt.IsZero() || r.FinishedAt.Before(r.AcceptedAt) {
				t.Errorf("accepted_at %v finished_at %v", r.AcceptedAt, r.FinishedAt)
			}
			if r.TraceID == "" {
				t.Error("result has no trace id")
			}
			var spanNames []string
			for _, sp := range spans.GetSpans() {
				if sp.SpanContext.TraceID().String() == r.TraceID && sp.SpanKind != trace.SpanKindServer {
					spanNames = append(spanNames, sp.Name)
				}
			}
			wantSpans := []string{"vigil-control " + tc.command}
			for _, s := range tc.steps {
				wantSpans = append(wantSpans, "vigil.svc."+s)
			}
			for _, w := range wantSpans {
				if !slices.Contains(spanNames, w) {
					t.Errorf("trace %s lacks span %q: %v", r.TraceID, w, spanNames)
				}
			}
			for _, c := range e.rec.For(ack.ID) {
				if c.TraceID != r.TraceID {
					t.Errorf("%s.%s at %s ran in trace %q, want the command's %q", c.Service, c.Verb, c.Instance, c.TraceID, r.TraceID)
				}
			}
			if row := e.publishedRow(ack.ID); row.Status != "succeeded" || row.Instance != ctl.ID() || row.Command != tc.command {
				t.Errorf("command_log row = %+v", row)
			}
			st := e.state("alice").State
			if st.Paused != tc.paused || st.Mode != tc.mode || !slices.Equal(st.Symbols, tc.symbols) || st.Revision != tc.revision {
				t.Errorf("desired state paused %v mode %s symbols %v revision %d, want %v %s %v %d",
					st.Paused, st.Mode, st.Symbols, st.Revision, tc.paused, tc.mode, tc.symbols, tc.revision)
			}
			writesState := len(tc.steps) > 0 && tc.command != "force-backfill" && tc.command != "clear-cache"
			if writesState && st.CommandID != ack.ID {
				t.Errorf("desired state written by %q, want %q", st.CommandID, ack.ID)
			}
		})
	}
	t.Run("backfill progress", func(t *testing.T) {
		var id string
		for _, c := range e.rec.Calls() {
			if c.Verb == contract.VerbBackfill {
				id = c.CommandID
			}
		}
		var units []string
		for _, p := range e.progress("alice", id) {
			units = append(units, fmt.Sprintf("%s %d/%d", p.Unit, p.Done, p.Total))
		}
		want := []string{"timeframes 0/2", "pages 1/2", "pages 2/2", "timeframes 1/2", "pages 1/2", "pages 2/2", "timeframes 2/2"}
		if !slices.Equal(units, want) {
			t.Errorf("progress = %v, want %v", units, want)
		}
	})
	t.Run("bob untouched", func(t *testing.T) {
		if st := e.state("bob"); st.Exists() {
			t.Errorf("bob has desired state %+v", st.State)
		}
		keys, err := e.rdb.Keys(context.Background(), "candles:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		want := []string{fmt.Sprintf("candles:%d:%d:BTC-USD:1h", e.users["bob"].id, e.users["bob"].exchange)}
		if !slices.Equal(keys, want) {
			t.Errorf("keys left = %v, want %v", keys, want)
		}
	})
	t.Run("latency metric", func(t *testing.T) {
		var rm metricdata.ResourceMetrics
		if err := metrics.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		if !hasPoint(rm, "vigil.control.command.duration", attribute.String("command", "pause"), attribute.String("status", "succeeded")) {
			t.Error("no command latency recorded for pause/succeeded")
		}
		if !hasPoint(rm, "vigil.control.queue.depth") {
			t.Error("no queue depth gauge")
		}
	})
}

// hasPoint reports whether metric name has a data point with attrs.
func hasPoint(rm metricdata.ResourceMetrics, name string, attrs ...attribute.KeyValue) bool {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			match := func(set attribute.Set) bool {
				for _, a := range attrs {
					if v, ok := set.Value(a.Key); !ok || v != a.Value {
						return false
					}
				}
				return true
			}
			switch d := m.Data.(type) {
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					if match(p.Attributes) {
						return true
					}
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					if match(p.Attributes) {
						return true
					}
				}
			}
		}
	}
	return false
}
