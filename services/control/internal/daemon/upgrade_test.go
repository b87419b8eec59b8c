package daemon_test

import (
	"context"
	"testing"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/control/internal/ledger"
)

// TestRunsACommandRecordedByANewerVersion: during a rolling upgrade a
// newer vigil-control instance may accept a command whose payload has a
// field this version does not know and record it in the queue; this
// instance, owning the user's queue, runs it (the recorded payload is
// read as a peer's message) instead of failing it invalid_payload.
func TestRunsACommandRecordedByANewerVersion(t *testing.T) {
	e := newEnv(t, 1)
	e.startControl("c1", testSettings(), 0)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	newer, err := ledger.Open(ctx, e.js, ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer newer.Stop()
	payload := []byte(`{"mode":"scalper-macdv","added_in_a_later_version":{"x":1}}`)
	const id = "01JUPGRADE0000000000000001"
	if _, _, err := newer.Record(ctx, ledger.Entry{
		ID: id, User: "alice", UserID: e.users["alice"].id, Command: contract.CmdSwitchMode, Payload: payload,
		Operator: "test", Digest: ledger.PayloadDigest(contract.CmdSwitchMode, payload),
	}, 32); err != nil {
		t.Fatal(err)
	}
	r := e.result("alice", id)
	if r.Status != contract.StatusSucceeded {
		t.Fatalf("the newer instance's command ended %s: %+v", r.Status, r.Error)
	}
	if st := e.state("alice"); st.State.Mode != contract.ModeScalperMACDV {
		t.Errorf("mode after the command: %s", st.State.Mode)
	}
}
