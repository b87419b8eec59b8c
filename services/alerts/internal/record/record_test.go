package record_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
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

// ids are the ids of as.
func ids(as ...record.Alert) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.ID)
	}
	return out
}

// republished collects the ids that core subscribers of vigil.alert.> see.
type republished struct {
	mu  sync.Mutex
	ids []string
}

func subscribeAlerts(t *testing.T, nc *nats.Conn) *republished {
	t.Helper()
	r := &republished{}
	sub, err := nc.Subscribe(contract.AlertSubjects, func(m *nats.Msg) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.ids = append(r.ids, m.Header.Get(jetstream.MsgIDHeader))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *republished) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ids)
}

func TestRecordStoresAndRepublishesEachAlertOnceAcrossFailures(t *testing.T) {
	ctx := context.Background()
	nc, js := testenv.Connect(t, testenv.StartNATS(t).URL())
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	core := subscribeAlerts(t, nc)
	rec := record.New(js)
	traced := alert("alice", "price-100k", 0)
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	traced.Trace = trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled, Remote: true})
	a1, a2, a3, a4 := alert("alice", "price-100k", 1), alert("bob", "price-100k", 1), alert("alice", "rsi-hot", 2), alert("bob", "rsi-hot", 3)
	for _, step := range []struct {
		name string
		// fail breaks the stream, repair mends it; nil when the batch is
		// recorded at the first attempt.
		fail, repair func()
		batch        []record.Alert
		fresh        []bool
		// stream is the alert ids expected in the stream afterwards, core
		// those seen by core subscribers since the test began.
		stream, core []string
	}{
		{name: "a new batch", batch: []record.Alert{traced, a1}, fresh: []bool{true, true},
			stream: ids(traced, a1), core: ids(traced, a1)},
		{name: "repeats of earlier alerts and within the batch", batch: []record.Alert{a1, a2, a2}, fresh: []bool{false, true, false},
			stream: ids(traced, a1, a2), core: ids(traced, a1, a2)},
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
			batch: []record.Alert{a4, a3}, fresh: []bool{true, true},
			stream: ids(a4, a3), core: ids(traced, a1, a2, a4, a3)},
	} {
		t.Run(step.name, func(t *testing.T) {
			if step.fail != nil {
				step.fail()
				if _, err := rec.Record(ctx, step.batch); !errors.Is(err, record.ErrPublish) {
					t.Fatalf("Record while broken: %v, want %v", err, record.ErrPublish)
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
			testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("core subscribers to see %v", step.core), func() bool {
				return len(core.get()) >= len(step.core)
			})
			if got := core.get(); !slices.Equal(got, step.core) {
				t.Errorf("core subscribers saw %v, want %v", got, step.core)
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
