package daemon_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// TestCommandsWhilePostgresIsDown stops PostgreSQL under a running
// instance: pause, resume and switch-mode of a known user are still
// accepted and succeed (the user comes from the directory's cache),
// reload-settings fails unavailable naming PostgreSQL, and once PostgreSQL
// is back command_log holds every command exactly once with its final
// status.
func TestCommandsWhilePostgresIsDown(t *testing.T) {
	e, pg := newEnvOnOwnPostgres(t)
	s := testSettings()
	s.UserCacheTTL = time.Millisecond // every lookup asks PostgreSQL first
	e.startControl("c1", s, 0)
	before := e.accept("alice", "reload-settings", "")
	if r := e.result("alice", before.ID); r.Status != contract.StatusSucceeded {
		t.Fatalf("reload-settings before the outage: %s %+v", r.Status, r.Error)
	}
	e.publishedRow(before.ID)

	pg.Stop()
	want := map[string]contract.Status{before.ID: contract.StatusSucceeded}
	for _, c := range []struct{ command, body string }{
		{"pause", ""}, {"resume", ""}, {"switch-mode", `{"mode":"scalper-macdv"}`},
	} {
		ack := e.accept("alice", c.command, c.body)
		if r := e.result("alice", ack.ID); r.Status != contract.StatusSucceeded {
			t.Errorf("%s while PostgreSQL is down: %s %+v", c.command, r.Status, r.Error)
		}
		want[ack.ID] = contract.StatusSucceeded
	}
	if st := e.state("alice").State; st.Paused || st.Mode != contract.ModeScalperMACDV {
		t.Errorf("desired state after the outage's commands: paused %v, mode %s", st.Paused, st.Mode)
	}
	reload := e.accept("alice", "reload-settings", "")
	r := e.result("alice", reload.ID)
	if r.Status != contract.StatusFailed || r.Error == nil || r.Error.Code != contract.CodeUnavailable ||
		!strings.Contains(r.Error.Message, "PostgreSQL") {
		t.Errorf("reload-settings while PostgreSQL is down: %s %+v, want failed unavailable naming PostgreSQL", r.Status, r.Error)
	}
	want[reload.ID] = contract.StatusFailed

	pg.Start()
	testenv.WaitFor(t, waitTimeout, "command_log to catch up", func() bool {
		for id, status := range want {
			if row, ok := e.logRow(id); !ok || row.Status != string(status) || !row.Published {
				return false
			}
		}
		return true
	})
	var rows, ids int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT id) FROM command_log`).Scan(&rows, &ids); err != nil {
		t.Fatal(err)
	}
	if rows != len(want) || ids != len(want) {
		t.Errorf("command_log holds %d rows of %d ids, want each of the %d commands once", rows, ids, len(want))
	}
}
