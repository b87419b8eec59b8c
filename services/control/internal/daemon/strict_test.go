package daemon_test

import (
	"testing"

	"vigil.dev/pkg/contract"
)

// TestBackfillOnlyWatchedSymbols: a force-backfill of a symbol the user does
// not watch (DOGE-USD; alice watches BTC-USD and ETH-USD) fails with
// invalid_payload naming symbol, and no service is called, so nothing is
// written into the user's keys.
func TestBackfillOnlyWatchedSymbols(t *testing.T) {
	e := newEnv(t, 1)
	e.startControl("c1", testSettings(), 0)
	ack := e.accept("alice", "force-backfill", `{"symbol":"DOGE-USD","timeframes":["1h"]}`)
	r := e.result("alice", ack.ID)
	if r.Status != contract.StatusFailed || r.Error == nil || r.Error.Code != contract.CodeInvalidPayload {
		t.Fatalf("status %s, error %+v; want failed with invalid_payload", r.Status, r.Error)
	}
	if len(r.Error.Fields) != 1 || r.Error.Fields[0].Field != "symbol" {
		t.Errorf("fields = %+v, want symbol", r.Error.Fields)
	}
	if calls := e.rec.For(ack.ID); len(calls) != 0 {
		t.Errorf("the services got %d calls, first %+v", len(calls), calls[0])
	}
}
