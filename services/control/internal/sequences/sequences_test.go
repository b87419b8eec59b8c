package sequences_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/desired"
	"vigil.dev/services/control/internal/directory"
	"vigil.dev/services/control/internal/fanout"
	"vigil.dev/services/control/internal/sequences"
	"vigil.dev/services/control/internal/testpeer"
)

// users is a directory of fixed users (the real one reads PostgreSQL,
// which these tests of the step order do not need).
type users map[string]directory.User

func (u users) Lookup(_ context.Context, token string) (directory.User, error) {
	if x, ok := u[token]; ok {
		return x, nil
	}
	return directory.User{}, fmt.Errorf("%w: %s", db.ErrUnknownUser, token)
}

func (u users) Refresh(ctx context.Context, token string) (directory.User, error) {
	return u.Lookup(ctx, token)
}

// fixture is a runner whose steps go over a real NATS server to one test
// peer of each service, with desired state in the real VIGIL_STATE bucket.
type fixture struct {
	runner *sequences.Runner
	states *desired.Store
	rec    *testpeer.Recorder
	peers  map[contract.Svc]*testpeer.Peer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	srv := testenv.StartNATS(t)
	nc, js := testenv.Connect(t, srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := natsx.EnsureKeyValue(ctx, js, natsx.StateBucket); err != nil {
		t.Fatalf("create VIGIL_STATE: %v", err)
	}
	states, err := desired.Open(ctx, js)
	if err != nil {
		t.Fatalf("open desired state: %v", err)
	}
	f := &fixture{states: states, rec: &testpeer.Recorder{}, peers: map[contract.Svc]*testpeer.Peer{}}
	for _, svc := range []contract.Svc{contract.SvcFeed, contract.SvcIndicators, contract.SvcAlerts} {
		f.peers[svc] = testpeer.Start(t, srv.URL(), svc, f.rec, testpeer.Options{
			Owner: true, GapFilled: contract.GapFill{"BTC-USD": {contract.TF1m: 3}}})
	}
	dir := users{"alice": {ID: 1, Token: "alice", Exchanges: []int64{7},
		Settings: json.RawMessage(`{"mode":"position-monitor","symbols":["BTC-USD"]}`)}}
	f.runner = sequences.New(sequences.Deps{
		Steps:  fanout.NewCaller(nc, nil, fanout.Options{}),
		States: states,
		Users:  dir,
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, sequences.Config{StepTimeout: 20 * time.Second})
	return f
}

// steps are the "<service> <verb>" calls the peers received for a command,
// in arrival order.
func (f *fixture) steps(id string) []string {
	var out []string
	for _, c := range f.rec.For(id) {
		out = append(out, string(c.Service)+" "+string(c.Verb))
	}
	return out
}

func (f *fixture) run(t *testing.T, id string, name contract.Command, p contract.Payload) sequences.Outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return f.runner.Run(ctx, sequences.Command{ID: id, User: "alice", Name: name, Payload: p})
}

func (f *fixture) state(t *testing.T) contract.DesiredState {
	t.Helper()
	e, err := f.states.Get(context.Background(), "alice")
	if err != nil || !e.Exists() {
		t.Fatalf("desired state of alice: %v (exists %v)", err, e.Exists())
	}
	return e.State
}

func resultOf(t *testing.T, o sequences.Outcome) map[string]any {
	t.Helper()
	b, err := json.Marshal(o.Result)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func equal(a, b []string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// TestPauseAndResumeOrder: pause quiesces alerts first, then feed, then
// indicators; resume goes the other way and reports the feed owner's gap
// fill; the desired state is written before the steps; a pause of a paused
// user sends nothing.
func TestPauseAndResumeOrder(t *testing.T) {
	f := newFixture(t)

	o := f.run(t, "p-1", contract.CmdPause, contract.PausePayload{})
	if o.Status != contract.StatusSucceeded || resultOf(t, o)["status"] != "paused" {
		t.Fatalf("pause: %+v", o)
	}
	if got, want := f.steps("p-1"), []string{"alerts pause", "feed pause", "indicators pause"}; !equal(got, want) {
		t.Fatalf("pause steps %v, want %v", got, want)
	}
	for _, c := range f.rec.For("p-1") {
		if c.State == nil || !c.State.Paused || c.State.CommandID != "p-1" {
			t.Fatalf("%s %s got state %+v, want the paused state written by p-1", c.Service, c.Verb, c.State)
		}
	}
	if st := f.state(t); !st.Paused || st.CommandID != "p-1" || st.ExchangeID != 7 {
		t.Fatalf("desired state after pause: %+v", st)
	}

	o = f.run(t, "p-2", contract.CmdPause, contract.PausePayload{})
	if o.Status != contract.StatusSucceeded || resultOf(t, o)["status"] != "already_paused" || len(f.steps("p-2")) != 0 {
		t.Fatalf("second pause: %+v, steps %v", o, f.steps("p-2"))
	}

	o = f.run(t, "r-1", contract.CmdResume, contract.ResumePayload{})
	res := resultOf(t, o)
	if o.Status != contract.StatusSucceeded || res["status"] != "resumed" {
		t.Fatalf("resume: %+v", o)
	}
	if got, want := f.steps("r-1"), []string{"indicators resume", "feed resume", "alerts resume"}; !equal(got, want) {
		t.Fatalf("resume steps %v, want %v", got, want)
	}
	if gap := fmt.Sprint(res["gap_filled"]); gap != "map[BTC-USD:map[1m:3]]" {
		t.Fatalf("resume gap_filled %s, want the feed owner's map[BTC-USD:map[1m:3]]", gap)
	}
	if st := f.state(t); st.Paused || st.CommandID != "r-1" {
		t.Fatalf("desired state after resume: %+v", st)
	}
}

// TestFailedStepStopsTheSequence: a step an instance fails ends the
// command failed with that service's code and message, the later steps are
// not sent, and the desired state stays written so instances converge.
func TestFailedStepStopsTheSequence(t *testing.T) {
	f := newFixture(t)
	f.peers[contract.SvcFeed].Set(contract.VerbPause, testpeer.Fail)

	o := f.run(t, "p-1", contract.CmdPause, contract.PausePayload{})
	if o.Status != contract.StatusFailed || o.Error == nil || o.Error.Code != contract.CodeInternal {
		t.Fatalf("pause with a failing feed: %+v", o)
	}
	if got, want := f.steps("p-1"), []string{"alerts pause", "feed pause"}; !equal(got, want) {
		t.Fatalf("steps %v, want %v (indicators not asked)", got, want)
	}
	if len(o.Steps) != 2 {
		t.Fatalf("outcome has %d steps, want 2", len(o.Steps))
	}
	if st := f.state(t); !st.Paused {
		t.Fatalf("desired state after the failed pause: %+v, want paused (written before the steps)", st)
	}
}

// TestUnknownUserWritesNothing: a command for a user the directory does
// not know fails with unknown_user before any step, and no state is seeded.
func TestUnknownUserWritesNothing(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o := f.runner.Run(ctx, sequences.Command{ID: "p-1", User: "mallory", Name: contract.CmdPause, Payload: contract.PausePayload{}})
	if o.Status != contract.StatusFailed || o.Error == nil || o.Error.Code != contract.CodeUnknownUser {
		t.Fatalf("pause of mallory: %+v", o)
	}
	if calls := f.rec.Calls(); len(calls) != 0 {
		t.Fatalf("steps sent for an unknown user: %+v", calls)
	}
	if e, err := f.states.Get(ctx, "mallory"); err != nil || e.Exists() {
		t.Fatalf("state of mallory: %+v, %v; want none", e, err)
	}
}

// TestSwitchModeOrder: switch-mode quiesces alerts, applies the new state
// on feed, indicators and alerts in that order, and starts alerts again
// unless the user is paused; the new state carries the next revision.
func TestSwitchModeOrder(t *testing.T) {
	f := newFixture(t)

	o := f.run(t, "m-1", contract.CmdSwitchMode, contract.SwitchModePayload{Mode: contract.ModeScalperMACDV})
	if o.Status != contract.StatusSucceeded || resultOf(t, o)["switched"] != true {
		t.Fatalf("switch-mode: %+v", o)
	}
	want := []string{"alerts pause", "feed apply", "indicators apply", "alerts apply", "alerts resume"}
	if got := f.steps("m-1"); !equal(got, want) {
		t.Fatalf("switch-mode steps %v, want %v", got, want)
	}
	st := f.state(t)
	if st.Mode != contract.ModeScalperMACDV || st.Settings.Mode != contract.ModeScalperMACDV || st.Revision != 2 {
		t.Fatalf("desired state after switch-mode: mode %s/%s revision %d, want scalper-macdv revision 2", st.Mode, st.Settings.Mode, st.Revision)
	}

	if o := f.run(t, "p-1", contract.CmdPause, contract.PausePayload{}); o.Status != contract.StatusSucceeded {
		t.Fatalf("pause: %+v", o)
	}
	o = f.run(t, "m-2", contract.CmdSwitchMode, contract.SwitchModePayload{Mode: contract.ModePositionMonitor})
	if o.Status != contract.StatusSucceeded {
		t.Fatalf("switch-mode of a paused user: %+v", o)
	}
	if got, want := f.steps("m-2"), want[:4]; !equal(got, want) {
		t.Fatalf("switch-mode steps of a paused user %v, want %v (alerts stay paused)", got, want)
	}

	o = f.run(t, "m-3", contract.CmdSwitchMode, contract.SwitchModePayload{Mode: contract.ModePositionMonitor})
	if o.Status != contract.StatusSucceeded || resultOf(t, o)["status"] != "already_in_mode" || len(f.steps("m-3")) != 0 {
		t.Fatalf("switch to the current mode: %+v, steps %v", o, f.steps("m-3"))
	}
}

// TestStalePlan: a dry run changes nothing and returns a plan hash; the
// real command with that hash runs while its inputs are unchanged, and is
// refused with conflict, sending no step, once the desired state moved.
func TestStalePlan(t *testing.T) {
	f := newFixture(t)

	dry := f.run(t, "d-1", contract.CmdSwitchMode, contract.SwitchModePayload{Mode: contract.ModeScalperMACDV,
		Planning: contract.Planning{DryRun: true}})
	plan, _ := resultOf(t, dry)["plan"].(string)
	if dry.Status != contract.StatusSucceeded || len(plan) != contract.PlanHashLength {
		t.Fatalf("dry run: %+v", dry)
	}
	for _, c := range f.rec.For("d-1") {
		if c.Verb != contract.VerbPlan {
			t.Fatalf("the dry run sent %s %s, want plan requests only", c.Service, c.Verb)
		}
	}
	if e, err := f.states.Get(context.Background(), "alice"); err != nil || e.Exists() {
		t.Fatalf("after the dry run alice's state is %+v (%v), want none written", e, err)
	}

	// The desired state moves on (a pause), so the plan is stale.
	if o := f.run(t, "p-1", contract.CmdPause, contract.PausePayload{}); o.Status != contract.StatusSucceeded {
		t.Fatalf("pause: %+v", o)
	}
	o := f.run(t, "m-1", contract.CmdSwitchMode, contract.SwitchModePayload{Mode: contract.ModeScalperMACDV,
		Planning: contract.Planning{Plan: plan}})
	if o.Status != contract.StatusFailed || o.Error == nil || o.Error.Code != contract.CodeConflict {
		t.Fatalf("switch-mode with a stale plan: %+v", o)
	}
	if steps := f.steps("m-1"); len(steps) != 0 {
		t.Fatalf("a stale plan sent steps %v", steps)
	}

	// A fresh plan of the same change is taken.
	dry = f.run(t, "d-2", contract.CmdSwitchMode, contract.SwitchModePayload{Mode: contract.ModeScalperMACDV,
		Planning: contract.Planning{DryRun: true}})
	plan, _ = resultOf(t, dry)["plan"].(string)
	o = f.run(t, "m-2", contract.CmdSwitchMode, contract.SwitchModePayload{Mode: contract.ModeScalperMACDV,
		Planning: contract.Planning{Plan: plan}})
	if o.Status != contract.StatusSucceeded || resultOf(t, o)["switched"] != true {
		t.Fatalf("switch-mode with a fresh plan: %+v", o)
	}
}
