package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// Users of TestCommandsInstances.
const (
	multiUser    = "multi"
	failoverUser = "failover"
)

// TestCommandsInstances runs three instances of feed, indicators and
// alerts and two of control: every instance confirms every step; a feed
// instance killed with SIGKILL makes the next command fail naming it, and
// once restarted under the same name it converges and commands succeed
// again; killing the control instance that executes a user's commands
// right after an ACK still ends the command with a result.
func TestCommandsInstances(t *testing.T) {
	s := newCmdStack(t, "VIGIL_FEED_SOURCE=sim")
	s.seed(t, multiUser, `{"mode":"position-monitor","symbols":["BTC-USD"]}`)
	s.seed(t, failoverUser, `{"mode":"position-monitor","symbols":["ETH-USD"]}`)
	began := time.Now()
	procs := map[string][]*testenv.Proc{}
	for _, svc := range services {
		n := 3
		if svc == contract.ServiceControl {
			n = 2
		}
		short := strings.TrimPrefix(svc, "vigil-")
		for i := 1; i <= n; i++ {
			procs[svc] = append(procs[svc], s.Start(svc, short+"-"+strconv.Itoa(i)))
		}
	}
	for _, user := range []string{multiUser, failoverUser} {
		testenv.WaitFor(t, 30*time.Second, "the desired state of "+user, func() bool { _, _, ok := s.state(user); return ok })
	}
	t.Logf("11 instances up and desired states written in %v", time.Since(began).Round(time.Millisecond))
	a := s.account(t, multiUser)
	testenv.WaitFor(t, 60*time.Second, "BTC-USD bars of "+multiUser, func() bool {
		return s.lastCandle(t, a.series(multiUser, "BTC-USD", contract.TF1m)).Start > 0
	})

	t.Run("every instance confirms every step", func(t *testing.T) {
		for _, c := range []struct {
			cmd     contract.Command
			payload string
			steps   []string
		}{
			{contract.CmdPause, `{}`, []string{"vigil-alerts pause", "vigil-feed pause", "vigil-indicators pause"}},
			{contract.CmdResume, `{}`, []string{"vigil-indicators resume", "vigil-feed resume", "vigil-alerts resume"}},
			{contract.CmdReloadSettings, `{}`, []string{"vigil-feed apply", "vigil-indicators apply", "vigil-alerts apply"}},
			{contract.CmdSwitchMode, `{"mode":"scalper-macdv"}`, []string{"vigil-alerts pause", "vigil-feed apply", "vigil-indicators apply", "vigil-alerts apply", "vigil-alerts resume"}},
			{contract.CmdClearCache, `{"scope":"timeframe","symbol":"BTC-USD","timeframe":"1d"}`, []string{"vigil-indicators forget"}},
			{contract.CmdForceBackfill, `{"symbol":"BTC-USD","timeframes":["5m"]}`, []string{"vigil-feed backfill", "vigil-indicators recompute"}},
		} {
			res := s.run(t, multiUser, c.cmd, c.payload)
			checkSteps(t, res, 3, c.steps...)
		}
	})

	t.Run("killed feed instance", func(t *testing.T) {
		victim := procs[contract.ServiceFeed][1]
		deadID := s.Instances(contract.ServiceFeed)[victim.Instance]
		if deadID == "" {
			t.Fatalf("%s is not running", victim.Instance)
		}
		victim.Kill()
		// Sent at once: the dead instance's heartbeats are still live
		// (3 s), so it is expected and does not answer: the feed step
		// fails when the stack's step timeout (30 s, testenv) ends.
		ack := s.accept(t, multiUser, contract.CmdPause, "{}")
		res := s.waitResult(t, multiUser, ack.ID, 90*time.Second)
		if res.Status != contract.StatusFailed || res.Error == nil {
			t.Fatalf("pause with a killed feed instance: %s, want failed", resultString(res))
		}
		var missing bool
		for _, st := range res.Steps {
			if st.Service == contract.ServiceFeed && slices.Contains(st.Missing, deadID) {
				missing = true
			}
		}
		if !missing {
			t.Errorf("no vigil-feed step lists %s as missing: %s", deadID, resultString(res))
		}
		if !strings.Contains(res.Error.Message, deadID) {
			t.Errorf("the error does not name %s: %s", deadID, res.Error.Message)
		}
		if st, _, _ := s.state(multiUser); !st.Paused {
			t.Errorf("desired state after the failed pause: %+v, want paused (written before the steps)", st)
		}

		restarted := s.Start(contract.ServiceFeed, victim.Instance)
		procs[contract.ServiceFeed][1] = restarted
		newID := s.Instances(contract.ServiceFeed)[victim.Instance]
		testenv.WaitFor(t, 30*time.Second, "the restarted "+victim.Instance+" to report "+multiUser+" paused", func() bool {
			for _, r := range s.svcStatus(t, "feed", "", 3) {
				var u struct {
					Paused     bool     `json:"paused"`
					Subscribed []string `json:"subscribed"`
				}
				if r.Instance == newID {
					return userStatus(r, multiUser, &u) && u.Paused && len(u.Subscribed) == 0
				}
			}
			return false
		})
		testenv.WaitFor(t, 15*time.Second, "the killed instance's heartbeats to time out", func() bool {
			replies := s.svcStatus(t, "feed", "", 3)
			for _, r := range replies {
				var st struct {
					Members []string `json:"members"`
				}
				if json.Unmarshal(r.Result, &st) != nil || len(st.Members) != 3 || slices.Contains(st.Members, deadID) || !slices.Contains(st.Members, newID) {
					return false
				}
			}
			return len(replies) == 3
		})
		res = s.run(t, multiUser, contract.CmdResume, "{}")
		checkSteps(t, res, 3, "vigil-indicators resume", "vigil-feed resume", "vigil-alerts resume")
	})

	t.Run("killed control executor", func(t *testing.T) {
		now := time.Now().UTC().Truncate(time.Minute)
		long := fmt.Sprintf(`{"symbol":"ETH-USD","timeframes":["1m"],"from":%q,"to":%q}`, now.Add(-10*24*time.Hour).Format(time.RFC3339), now.Format(time.RFC3339))
		for _, c := range []struct {
			name    string
			cmd     contract.Command
			payload string
			// running: kill once the executor runs the command (else
			// right after the ACK).
			running bool
		}{
			{"pause killed after the ACK", contract.CmdPause, "{}", false},
			{"backfill job killed while running", contract.CmdForceBackfill, long, true},
		} {
			owner := controlOwner(t, s, failoverUser)
			var victim int
			ids := s.Instances(contract.ServiceControl)
			for i, p := range procs[contract.ServiceControl] {
				if ids[p.Instance] == owner {
					victim = i
				}
			}
			if ids[procs[contract.ServiceControl][victim].Instance] != owner {
				t.Fatalf("the owner %s of %s is none of %v", owner, failoverUser, ids)
			}
			ack := s.accept(t, failoverUser, c.cmd, c.payload)
			if c.running {
				testenv.WaitFor(t, 30*time.Second, c.name+": running on "+owner+" with a page done", func() bool {
					r := commandRowOf(t, s, failoverUser, ack.ID)
					return r.Status == "running" && r.Instance == owner &&
						s.count(t, contract.StreamResults, contract.ProgressSubject(failoverUser, ack.ID), 0) >= 2
				})
			}
			procs[contract.ServiceControl][victim].Kill()
			res := s.waitResult(t, failoverUser, ack.ID, 90*time.Second)
			row := commandRowOf(t, s, failoverUser, ack.ID)
			for _, r := range s.finalRows(t, failoverUser, ack.ID) {
				if r.ID == ack.ID {
					row = r
				}
			}
			switch {
			case c.running && (res.Status != contract.StatusSucceeded || row.Attempts != 2):
				t.Errorf("%s: %s after %d attempts, want the job re-run once by the surviving instance and succeeded", c.name, resultString(res), row.Attempts)
			case res.Status == contract.StatusFailed:
				if res.Error == nil || !strings.Contains(res.Error.Message, owner) {
					t.Errorf("%s: failed without naming the killed executor %s: %s", c.name, owner, resultString(res))
				}
			case res.Status != contract.StatusSucceeded:
				t.Errorf("%s: %s, want succeeded or failed", c.name, resultString(res))
			}
			if row.Status != string(res.Status) || row.Finished == nil {
				t.Errorf("%s: command_log row %+v, want %s and finished", c.name, row, res.Status)
			}
			t.Logf("%s (executor %s): %s after %d attempts, %v from ACK to result",
				c.name, owner, res.Status, row.Attempts, res.FinishedAt.Sub(res.AcceptedAt).Round(time.Millisecond))
			// The survivor runs the user's next command; the killed
			// instance restarts under its name for the next round.
			s.run(t, failoverUser, contract.CmdResume, "{}")
			procs[contract.ServiceControl][victim] = s.Start(contract.ServiceControl, procs[contract.ServiceControl][victim].Instance)
		}
	})
}

// commandRowOf is the command_log row of command id of user as the
// projector wrote it so far (zero when it has none yet).
func commandRowOf(t *testing.T, s *cmdStack, user, id string) commandRow {
	t.Helper()
	for _, r := range s.commandRows(t, user) {
		if r.ID == id {
			return r
		}
	}
	return commandRow{}
}

// controlOwner is the control instance that owns user, as every control
// instance reports it.
func controlOwner(t *testing.T, s *cmdStack, user string) string {
	t.Helper()
	var owner string
	testenv.WaitFor(t, 15*time.Second, "the control instances to agree on the owner of "+user, func() bool {
		replies := s.svcStatus(t, "control", `{"user":"`+user+`"}`, 2)
		owners := map[string]bool{}
		for _, r := range replies {
			var u struct {
				Owner   string   `json:"owner"`
				Members []string `json:"members"`
			}
			var st struct {
				Members []string `json:"members"`
			}
			if !userStatus(r, user, &u) || json.Unmarshal(r.Result, &st) != nil || len(st.Members) != 2 {
				return false
			}
			owners[u.Owner] = true
			owner = u.Owner
		}
		return len(replies) == 2 && len(owners) == 1 && owner != ""
	})
	return owner
}
