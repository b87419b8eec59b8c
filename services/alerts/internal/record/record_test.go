package record_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/alerts/internal/record"
)

func TestMain(m *testing.M) {
	otel.SetTextMapPropagator(propagation.TraceContext{})
	os.Exit(testenv.Run(m))
}

// alert is user's alert of rule on bar i.
func alert(user, rule string, i int64) record.Alert {
	start := int64(1_767_225_600) + i*3600
	return record.Alert{Alert: contract.Alert{ID: contract.AlertID(user, rule, start), User: user, UserID: 7, ExchangeID: 17,
		RuleID: rule, Kind: contract.RuleThreshold, Symbol: "BTC-USD", Timeframe: contract.TF1h, BarStart: start,
		Message: "price rose above 100000", Value: 100_500, FiredAt: time.Unix(start+3601, 0).UTC()}}
}

// streamIDs are the Nats-Msg-Ids of VIGIL_ALERTS's messages, in order.
func streamIDs(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	ctx := context.Background()
	stream, err := js.Stream(ctx, contract.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.Header.Get(jetstream.MsgIDHeader))
	}
	return ids
}

// tableIDs are the ids in alert_events, sorted.
func tableIDs(t *testing.T, exec func(context.Context, string) ([]string, error)) []string {
	t.Helper()
	ids, err := exec(context.Background(), `SELECT id FROM alert_events ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestRecordStoresEachAlertOnceAcrossFailures(t *testing.T) {
	ctx := context.Background()
	_, js := testenv.Connect(t, testenv.StartNATS(t).URL())
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	pool := testenv.PostgresPool(t)
	query := func(ctx context.Context, sql string) ([]string, error) {
		rows, err := pool.Query(ctx, sql)
		if err != nil {
			return nil, err
		}
		var ids []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return nil, err
			}
			ids = append(ids, id)
		}
		return ids, rows.Err()
	}
	exec := func(sql string) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	rec := record.New(js, pool)
	traced := alert("alice", "price-100k", 0)
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	traced.Trace = trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled, Remote: true})
	a1, a2, a3, a4 := alert("alice", "price-100k", 1), alert("bob", "price-100k", 1), alert("alice", "rsi-hot", 2), alert("bob", "rsi-hot", 3)
	id := func(as ...record.Alert) []string {
		var ids []string
		for _, a := range as {
			ids = append(ids, a.ID)
		}
		return ids
	}
	for _, step := range []struct {
		name string
		// fail breaks the stream or the table, repair mends it; nil when
		// the batch is recorded at the first attempt.
		fail, repair func()
		wantErr      error
		batch        []record.Alert
		fresh        []bool
		// stream and table are the alert ids expected afterwards.
		stream, table []string
	}{
		{name: "a new batch", batch: []record.Alert{traced, a1}, fresh: []bool{true, true},
			stream: id(traced, a1), table: id(traced, a1)},
		{name: "repeats of earlier alerts and within the batch", batch: []record.Alert{a1, a2, a2}, fresh: []bool{false, true, false},
			stream: id(traced, a1, a2), table: id(traced, a1, a2)},
		{name: "the insert fails, then the batch is recorded again",
			fail:    func() { exec(`ALTER TABLE alert_events RENAME TO alert_events_away`) },
			repair:  func() { exec(`ALTER TABLE alert_events_away RENAME TO alert_events`) },
			wantErr: record.ErrStore, batch: []record.Alert{a2, a3}, fresh: []bool{false, true},
			stream: id(traced, a1, a2, a3), table: id(traced, a1, a2, a3)},
		{name: "the publish fails, then the batch is recorded again",
			fail: func() {
				if err := js.DeleteStream(ctx, contract.StreamAlerts); err != nil {
					t.Fatal(err)
				}
			},
			repair: func() {
				if err := natsx.EnsureStreams(ctx, js); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: record.ErrPublish, batch: []record.Alert{a4, a3}, fresh: []bool{true, false},
			stream: id(a4, a3), table: id(traced, a1, a2, a3, a4)},
	} {
		t.Run(step.name, func(t *testing.T) {
			if step.fail != nil {
				step.fail()
				if _, err := rec.Record(ctx, step.batch); !errors.Is(err, step.wantErr) {
					t.Fatalf("Record while broken: %v, want %v", err, step.wantErr)
				}
				step.repair()
			}
			fresh, err := rec.Record(ctx, step.batch)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(fresh, step.fresh) {
				t.Errorf("fresh %v, want %v", fresh, step.fresh)
			}
			if got := streamIDs(t, js); !slices.Equal(got, step.stream) {
				t.Errorf("stream holds %v, want %v", got, step.stream)
			}
			if got, want := tableIDs(t, query), slices.Sorted(slices.Values(step.table)); !slices.Equal(got, want) {
				t.Errorf("alert_events holds %v, want %v", got, want)
			}
		})
	}
	t.Run("an alert continues the trace of its update", func(t *testing.T) {
		plain, continued := alert("carol", "price-100k", 4), alert("carol", "rsi-hot", 4)
		continued.Trace = traced.Trace
		if _, err := rec.Record(ctx, []record.Alert{plain, continued}); err != nil {
			t.Fatal(err)
		}
		stream, err := js.Stream(ctx, contract.StreamAlerts)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			alert record.Alert
			want  string
		}{{plain, ""}, {continued, "00-" + traceID.String() + "-" + spanID.String() + "-01"}} {
			m, err := stream.GetLastMsgForSubject(ctx, contract.AlertSubject(tc.alert.User, tc.alert.RuleID))
			if err != nil {
				t.Fatal(err)
			}
			if tp := m.Header.Get("traceparent"); tp != tc.want {
				t.Errorf("alert %s: traceparent %q, want %q", tc.alert.ID, tp, tc.want)
			}
		}
	})
}
