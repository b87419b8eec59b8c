package fanout_test

import (
	"context"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/fanout"
	"vigil.dev/services/control/internal/testpeer"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// setup connects to a NATS server of the test's own and creates the
// membership bucket.
func setup(t *testing.T) (*nats.Conn, jetstream.JetStream, string) {
	t.Helper()
	srv := testenv.StartNATS(t)
	nc, js := testenv.Connect(t, srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g, err := membership.Join(ctx, js, "vigil-control", "caller", membership.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Leave(context.Background()) })
	return nc, js, srv.URL()
}

func TestCall(t *testing.T) {
	nc, js, url := setup(t)
	rec := &testpeer.Recorder{}
	var peers []*testpeer.Peer
	for i := range 3 {
		peers = append(peers, testpeer.Start(t, url, contract.SvcFeed, rec, testpeer.Options{Owner: i == 0}))
	}
	members, err := membership.WatchRoster(context.Background(), js, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(members.Stop)
	caller := fanout.NewCaller(nc, members, fanout.Options{PingWait: 300 * time.Millisecond, PingStall: 50 * time.Millisecond})
	req := contract.SvcRequest{CommandID: "c1", User: "alice"}
	var ids []string
	for _, p := range peers {
		ids = append(ids, p.ID())
	}
	slices.Sort(ids)

	t.Run("every instance answers", func(t *testing.T) {
		a, err := caller.Call(context.Background(), contract.SvcFeed, contract.VerbApply, req, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if a.Step.Service != "vigil-feed" || a.Step.Verb != contract.VerbApply || a.Step.Instances != 3 || a.Step.Acked != 3 || len(a.Replies) != 3 {
			t.Errorf("step %+v, %d replies", a.Step, len(a.Replies))
		}
		checkOutcomes(t, a.Step, map[string]contract.InstanceStatus{ids[0]: contract.InstanceAnswered,
			ids[1]: contract.InstanceAnswered, ids[2]: contract.InstanceAnswered})
	})
	t.Run("no instance of a service", func(t *testing.T) {
		start := time.Now()
		a, err := caller.Call(context.Background(), contract.SvcAlerts, contract.VerbApply, req, time.Second)
		if err == nil || a.Step.Error == nil || a.Step.Error.Code != contract.CodeUnavailable || a.Step.Instances != 0 {
			t.Errorf("err %v step %+v", err, a.Step)
		}
		if took := time.Since(start); took > 900*time.Millisecond {
			t.Errorf("took %v: no responders should end it early", took)
		}
	})
	t.Run("a live member that does not answer", func(t *testing.T) {
		kv, err := js.KeyValue(context.Background(), membership.Bucket)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(context.Background(), "vigil-feed.ghost", []byte("now")); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 30*time.Second, "ghost to be live", func() bool { return slices.Contains(members.Live("vigil-feed"), "ghost") })
		a, err := caller.Call(context.Background(), contract.SvcFeed, contract.VerbPause, req, 300*time.Millisecond)
		if err == nil || a.Step.Instances != 4 || a.Step.Acked != 3 || !slices.Equal(a.Step.Missing, []string{"ghost"}) ||
			a.Step.Error.Code != contract.CodeTimeout || !strings.Contains(a.Step.Error.Message, "ghost (no answer within 300ms)") {
			t.Errorf("err %v step %+v %+v", err, a.Step, a.Step.Error)
		}
		checkOutcomes(t, a.Step, map[string]contract.InstanceStatus{ids[0]: contract.InstanceAnswered,
			ids[1]: contract.InstanceAnswered, ids[2]: contract.InstanceAnswered, "ghost": contract.InstanceMissing})
		if o := a.Step.Outcomes[slices.IndexFunc(a.Step.Outcomes, func(o contract.InstanceOutcome) bool { return o.Instance == "ghost" })]; o.Error == nil ||
			o.Error.Code != contract.CodeTimeout || o.Error.Message != "no answer within 300ms" {
			t.Errorf("ghost's outcome %+v %+v", o, o.Error)
		}
		if err := kv.Delete(context.Background(), "vigil-feed.ghost"); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 30*time.Second, "ghost to leave", func() bool { return !slices.Contains(members.Live("vigil-feed"), "ghost") })
	})
	t.Run("an instance answers an error", func(t *testing.T) {
		peers[1].Set(contract.VerbApply, testpeer.Fail)
		defer peers[1].Set(contract.VerbApply, testpeer.Answer)
		a, err := caller.Call(context.Background(), contract.SvcFeed, contract.VerbApply, req, time.Second)
		if err == nil || a.Step.Acked != 2 || !slices.Equal(a.Step.Missing, []string{peers[1].ID()}) || a.Step.Error.Code != contract.CodeInternal {
			t.Errorf("err %v step %+v", err, a.Step)
		}
		want := map[string]contract.InstanceStatus{}
		for _, p := range peers {
			want[p.ID()] = contract.InstanceAnswered
		}
		want[peers[1].ID()] = contract.InstanceFailed
		checkOutcomes(t, a.Step, want)
		for _, o := range a.Step.Outcomes {
			if o.Outcome == contract.InstanceFailed && (o.Error == nil || o.Error.Code != contract.CodeInternal || !strings.Contains(o.Error.Message, "told to fail")) {
				t.Errorf("failed outcome %+v %+v: want the instance's own error", o, o.Error)
			}
		}
	})
	t.Run("context ends", func(t *testing.T) {
		peers[2].Set(contract.VerbApply, testpeer.Hang)
		defer peers[2].Release()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := caller.Call(ctx, contract.SvcFeed, contract.VerbApply, req, 5*time.Second)
		if err != context.DeadlineExceeded {
			t.Errorf("err = %v", err)
		}
	})
}

// checkOutcomes checks that step lists exactly want's instances, sorted,
// each with its outcome, and that answered ones carry no error and the
// others one.
func checkOutcomes(t *testing.T, step contract.Step, want map[string]contract.InstanceStatus) {
	t.Helper()
	got := map[string]contract.InstanceStatus{}
	var order []string
	for _, o := range step.Outcomes {
		got[o.Instance] = o.Outcome
		order = append(order, o.Instance)
		if (o.Outcome == contract.InstanceAnswered) != (o.Error == nil) {
			t.Errorf("instance %s: outcome %s with error %+v", o.Instance, o.Outcome, o.Error)
		}
	}
	if !maps.Equal(got, want) || !slices.IsSorted(order) || len(order) != len(want) {
		t.Errorf("outcomes %v (order %v), want %v", got, order, want)
	}
}
