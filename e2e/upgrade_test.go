//go:build upgrade

package e2e

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

// upgradeFrom is the commit whose binaries run as the previous version:
// main when the rolling-upgrade work began (2026-12-02), before that
// day's peer tolerance of recorded payloads, configuration versions, TLS
// options and per-tenant quotas. It speaks the same contract as HEAD
// (subjects, verbs, payloads, streams, migrations), which is what a
// rolling upgrade between consecutive releases requires; the commit just
// before HEAD would mostly test a version against itself.
// VIGIL_UPGRADE_FROM names another commit.
const upgradeFrom = "58e6be7a9df0c2846471929a6218a88f52c1afe0"

// upgradeUsers are the users of TestMixedVersions: enough that each
// instance of every service owns some (ownership is a hash).
var upgradeUsers = []string{"up-a", "up-b", "up-c", "up-d", "up-e", "up-f"}

// TestMixedVersions runs one instance of every service built from
// upgradeFrom and one built from this tree against the same NATS, Redis
// and PostgreSQL, as during a rolling upgrade, and checks that pause,
// resume, reload-settings, switch-mode (there and back) and force-backfill
// succeed with every step confirmed by both versions, for a user whose
// queue the old vigil-control runs and one whose queue the new one runs,
// and that candles, indicator updates and alerts flow for every user
// afterwards.
func TestMixedVersions(t *testing.T) {
	from := upgradeFrom
	if env := os.Getenv("VIGIL_UPGRADE_FROM"); env != "" {
		from = env
	}
	began := time.Now()
	oldBin := testenv.BuildRevision(t, from)
	t.Logf("binaries of %s ready in %v (%s)", from[:7], time.Since(began).Round(time.Millisecond), oldBin)

	s := newCmdStack(t, "VIGIL_FEED_SOURCE=sim")
	for _, u := range upgradeUsers {
		s.seed(t, u, liveAlertSettings)
	}
	began = time.Now()
	for _, svc := range services {
		short := strings.TrimPrefix(svc, "vigil-")
		s.StartBinary(oldBin+"/"+svc, svc, short+"-old")
		s.Start(svc, short+"-new")
	}
	for _, u := range upgradeUsers {
		testenv.WaitFor(t, 60*time.Second, "the desired state of "+u, func() bool { _, _, ok := s.state(u); return ok })
	}
	t.Logf("8 instances of two versions up in %v", time.Since(began).Round(time.Millisecond))
	for _, svc := range services {
		revs := revisions(t, s.Conn(), svc)
		short := strings.TrimPrefix(svc, "vigil-")
		if revs[short+"-old"] != from[:7] || revs[short+"-new"] == "" || revs[short+"-new"] == from[:7] {
			t.Fatalf("%s revisions %v: want %s-old at %s and %s-new at another", svc, revs, short, from[:7], short)
		}
	}
	testenv.WaitFor(t, 90*time.Second, "candles, indicator updates and alerts of every user", func() bool {
		for _, u := range upgradeUsers {
			if !s.flowing(t, u, streamSeqs{}) {
				return false
			}
		}
		return true
	})

	ids := s.Instances(contract.ServiceControl)
	byOwner := map[string]string{}
	for _, u := range upgradeUsers {
		owner := controlOwner(t, s, u)
		if _, ok := byOwner[owner]; !ok {
			byOwner[owner] = u
		}
	}
	for _, inst := range []string{"control-old", "control-new"} {
		u, ok := byOwner[ids[inst]]
		if !ok {
			t.Fatalf("%s owns none of %v: owners %v", inst, upgradeUsers, byOwner)
		}
		t.Run("commands run by "+inst, func(t *testing.T) { runCommandSequence(t, s, u) })
	}

	after := s.seqs(t)
	testenv.WaitFor(t, 60*time.Second, "candles, indicator updates and alerts of every user after the commands", func() bool {
		for _, u := range upgradeUsers {
			if !s.flowing(t, u, after) {
				return false
			}
		}
		return true
	})
}

// runCommandSequence runs the command sequence of TestMixedVersions for
// user: each must succeed with every step confirmed by 2 instances. Each
// id is then sent again, so that both versions answer it after it
// settled: the first ACK again, or a conflict (an old instance does not
// read what a new one keeps of a settled command), never a second
// acceptance, which the user's queue sequence would count.
func runCommandSequence(t *testing.T, s *cmdStack, user string) {
	seqBefore := queueSeq(t, s, user)
	commands := 0
	for _, c := range []struct {
		cmd     contract.Command
		payload string
		steps   []string
	}{
		{contract.CmdPause, `{}`, []string{"vigil-alerts pause", "vigil-feed pause", "vigil-indicators pause"}},
		{contract.CmdResume, `{}`, []string{"vigil-indicators resume", "vigil-feed resume", "vigil-alerts resume"}},
		{contract.CmdReloadSettings, `{}`, []string{"vigil-feed apply", "vigil-indicators apply", "vigil-alerts apply"}},
		{contract.CmdSwitchMode, `{"mode":"position-monitor"}`, []string{"vigil-alerts pause", "vigil-feed apply", "vigil-indicators apply", "vigil-alerts apply", "vigil-alerts resume"}},
		{contract.CmdSwitchMode, `{"mode":"scalper-macdv"}`, []string{"vigil-alerts pause", "vigil-feed apply", "vigil-indicators apply", "vigil-alerts apply", "vigil-alerts resume"}},
		{contract.CmdForceBackfill, `{"symbol":"BTC-USD","timeframes":["5m"]}`, []string{"vigil-feed backfill", "vigil-indicators recompute"}},
	} {
		began := time.Now()
		first := s.accept(t, user, c.cmd, c.payload)
		res := s.waitResult(t, user, first.ID, 60*time.Second)
		if res.Status != contract.StatusSucceeded {
			t.Fatalf("%s of %s %s: %s", c.cmd, user, c.payload, resultString(res))
		}
		commands++
		checkSteps(t, res, 2, c.steps...)
		t.Logf("%s %s: %s in %v", user, c.cmd, res.Status, time.Since(began).Round(time.Millisecond))
		answers := map[string]int{}
		for range 6 {
			switch ack := s.send(t, user, c.cmd, c.payload, first.ID); {
			case ack.Accepted && ack.ID == first.ID && ack.Position == first.Position:
				answers["first ACK"]++
			case ack.Error != nil && ack.Error.Code == contract.CodeConflict:
				answers["conflict"]++
			default:
				t.Errorf("%s %s sent again: %s, want the first ACK %s or a conflict", user, c.cmd, ackString(ack), ackString(first))
			}
		}
		t.Logf("%s %s sent again 6 times: %v", user, c.cmd, answers)
	}
	if got := queueSeq(t, s, user) - seqBefore; got != int64(commands) {
		t.Errorf("%s's queue accepted %d commands, want %d: an id sent again was accepted again", user, got, commands)
	}
	if st, _, _ := s.state(user); st.Paused || st.Mode != contract.ModeScalperMACDV {
		t.Errorf("desired state of %s after the sequence: paused=%v mode=%s", user, st.Paused, st.Mode)
	}
}

// revisions are the micro "revision" metadata of service's instances, by
// instance name.
func revisions(t *testing.T, nc *nats.Conn, service string) map[string]string {
	t.Helper()
	out := map[string]string{}
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe() //nolint:errcheck // best effort
	if err := nc.PublishRequest("$SRV.INFO."+service, inbox, nil); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := sub.NextMsg(time.Second)
		if err != nil {
			return out
		}
		var info micro.Info
		if json.Unmarshal(msg.Data, &info) == nil {
			out[info.Metadata["instance"]] = info.Metadata["revision"]
		}
	}
}

// queueSeq is the sequence number of user's last accepted command, from
// the user's entry in VIGIL_QUEUE.
func queueSeq(t *testing.T, s *cmdStack, user string) int64 {
	t.Helper()
	e := s.kvEntry(t, natsx.BucketQueue, contract.StateKey(user))
	if e == nil {
		return 0
	}
	var q struct {
		Seq int64 `json:"seq"`
	}
	if err := json.Unmarshal(e.Value(), &q); err != nil {
		t.Fatalf("queue entry of %s: %v", user, err)
	}
	return q.Seq
}
