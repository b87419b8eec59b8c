package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/testpeer"
)

// waitMembers waits until every instance sees all of them.
func waitMembers(t *testing.T, insts ...*controlInstance) []string {
	t.Helper()
	var ids []string
	for _, c := range insts {
		ids = append(ids, c.ID())
	}
	slices.Sort(ids)
	testenv.WaitFor(t, waitTimeout, "control instances to see each other", func() bool {
		for _, c := range insts {
			if !slices.Equal(c.Members(), ids) {
				return false
			}
		}
		return true
	})
	return ids
}

// TestTwoInstancesNeverConcurrent sends two users' commands to two control
// instances at once: each user's commands run one after the other on the
// user's owner, and every command gets its result.
func TestTwoInstancesNeverConcurrent(t *testing.T) {
	e := newEnv(t, 1)
	c1 := e.startControl("c1", testSettings(), 0)
	c2 := e.startControl("c2", testSettings(), 0)
	members := waitMembers(t, c1, c2)
	commands := []struct{ command, body string }{
		{"reload-settings", ""}, {"switch-mode", `{"mode":"scalper-macdv"}`}, {"pause", ""},
		{"clear-cache", `{"scope":"all"}`}, {"resume", ""}, {"switch-mode", `{"mode":"position-monitor"}`},
		{"reload-settings", ""}, {"pause", ""}, {"resume", `{"symbols":["SOL-USD"]}`}, {"reload-settings", ""},
	}
	ids := map[string][]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, token := range []string{"alice", "bob"} {
		wg.Go(func() {
			for _, c := range commands {
				ack, _ := e.send(token, c.command, c.body, nil)
				if !ack.Accepted {
					t.Errorf("%s %s: %+v", token, c.command, ack.Error)
					continue
				}
				mu.Lock()
				ids[token] = append(ids[token], ack.ID)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for token, list := range ids {
		owner := membership.Owner(members, token)
		type span struct{ start, end time.Time }
		var spans []span
		for _, id := range list {
			r := e.result(token, id)
			superseded := r.Status == contract.StatusCancelled && (r.Command == contract.CmdPause || r.Command == contract.CmdResume) &&
				strings.Contains(string(r.Result), `"superseded_by"`)
			if r.Status != contract.StatusSucceeded && !superseded {
				t.Errorf("%s %s: %s %+v", token, r.Command, r.Status, r.Error)
			}
			row := e.publishedRow(id)
			if superseded {
				continue // a newer pause or resume replaced it before it ran
			}
			if row.Instance != owner {
				t.Errorf("%s's %s ran on %s, the owner is %s", token, id, row.Instance, owner)
			}
			spans = append(spans, span{*row.Started, *row.Finished})
		}
		slices.SortFunc(spans, func(a, b span) int { return a.start.Compare(b.start) })
		for i := 1; i < len(spans); i++ {
			if spans[i].start.Before(spans[i-1].end) {
				t.Errorf("%s: a command started at %v before the previous one finished at %v", token, spans[i].start, spans[i-1].end)
			}
		}
	}
	t.Run("status", func(t *testing.T) {
		replies, err := testenv.Verb(e.nc, contract.SvcControl, contract.VerbStatus, contract.SvcRequest{User: "alice"}, 2, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		for _, r := range replies {
			if !r.OK {
				t.Fatalf("status failed: %+v", r.Error)
			}
			var st contract.ControlStatus
			if err := json.Unmarshal(r.Result, &st); err != nil {
				t.Fatal(err)
			}
			seen = append(seen, st.Instance)
			if !slices.Equal(st.Members, members) || st.Users["alice"].Owner != membership.Owner(members, "alice") {
				t.Errorf("status of %s: members %v, alice %+v", st.Instance, st.Members, st.Users["alice"])
			}
			if _, ok := st.Users["bob"]; ok {
				t.Error("status for alice lists bob")
			}
		}
		slices.Sort(seen)
		if !slices.Equal(seen, members) {
			t.Errorf("status answered by %v, want %v", seen, members)
		}
	})
}

// TestExecutorKilled kills the control instance that runs a user's command
// after its ACK: the other instance fails that command with a result, runs
// the command queued behind it, and re-runs an interrupted background job.
func TestExecutorKilled(t *testing.T) {
	e := newEnv(t, 1)
	c1 := e.startControl("c1", testSettings(), 0)
	c2 := e.startControl("c2", testSettings(), 0)
	members := waitMembers(t, c1, c2)
	owner, survivor := c1, c2
	if membership.Owner(members, "alice") != c1.ID() {
		owner, survivor = c2, c1
	}
	alerts, feed := e.peers[contract.SvcAlerts][0], e.peers[contract.SvcFeed][0]
	alerts.Set(contract.VerbApply, testpeer.Hang)
	feed.Set(contract.VerbBackfill, testpeer.Hang)
	t.Cleanup(alerts.Release)
	t.Cleanup(feed.Release)
	job := e.accept("alice", "force-backfill", `{"symbol":"BTC-USD","timeframes":["1h"]}`)
	testenv.WaitFor(t, waitTimeout, "the backfill to run", func() bool { return len(e.callsOf(job.ID, contract.VerbBackfill)) > 0 })
	running := e.accept("alice", "reload-settings", "")
	testenv.WaitFor(t, waitTimeout, "the reload to reach alerts", func() bool { return len(e.callsOf(running.ID, contract.VerbApply)) == 3 })
	queued := e.accept("alice", "switch-mode", `{"mode":"scalper-macdv"}`)

	killed := time.Now()
	owner.Kill()
	alerts.Release()
	feed.Release()

	r := e.result("alice", running.ID)
	t.Logf("the interrupted command's result came %v after the kill (membership timeout 1s, sweep 200ms)", time.Since(killed))
	if r.Status != contract.StatusFailed || r.Error == nil || r.Error.Code != contract.CodeUnavailable ||
		!strings.Contains(r.Error.Message, owner.ID()) || !strings.Contains(r.Error.Message, "died") {
		t.Errorf("interrupted reload-settings: %s %+v", r.Status, r.Error)
	}
	if r := e.result("alice", queued.ID); r.Status != contract.StatusSucceeded {
		t.Errorf("queued switch-mode: %s %+v", r.Status, r.Error)
	}
	if row := e.publishedRow(queued.ID); row.Instance != survivor.ID() {
		t.Errorf("queued command ran on %s, want the survivor %s", row.Instance, survivor.ID())
	}
	rj := e.result("alice", job.ID)
	if rj.Status != contract.StatusSucceeded || decode[contract.ForceBackfillResult](t, rj.Result).Candles[contract.TF1h] != 1000 {
		t.Errorf("re-run backfill: %s %s %+v", rj.Status, rj.Result, rj.Error)
	}
	var attempts int
	var instance string
	if err := e.pool.QueryRow(context.Background(), `SELECT attempts, control_instance FROM command_log WHERE id = $1`, job.ID).Scan(&attempts, &instance); err != nil {
		t.Fatal(err)
	}
	if attempts != 2 || instance != survivor.ID() {
		t.Errorf("backfill attempts %d on %s, want 2 on %s", attempts, instance, survivor.ID())
	}
	if got := fmt.Sprint(survivor.Members()); got != fmt.Sprint([]string{survivor.ID()}) {
		t.Errorf("survivor sees members %s", got)
	}
}
