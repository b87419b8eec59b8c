package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// planUser is the user of the dry-run scenario of TestCommandsSim.
const planUser = "plan"

// testDryRun: dry runs of reload-settings, switch-mode, clear-cache and
// force-backfill against the real services each succeed with a plan hash
// and change nothing: the user's desired state (KV revision and bytes), its
// Redis keys and values (DUMP), and the user's messages on the candle,
// indicator and alert streams are the same before and after; the results
// stream holds only the dry runs' own results. The user is paused first,
// so that its own data flow does not change what is compared.
func testDryRun(t *testing.T, s *cmdStack) {
	a := s.account(t, planUser)
	testenv.WaitFor(t, 60*time.Second, "candles of the plan user in Redis", func() bool {
		return len(s.keys(t, "candles:"+itoa(a.UserID)+":*")) > 0
	})
	s.run(t, planUser, contract.CmdPause, `{}`)

	revision, state := s.stateEntry(t, planUser)
	keys := s.snapshot(t, userKeys(a))
	flow := s.seqs(t)
	results := s.lastSeq(t, contract.StreamResults)

	var ids []string
	for _, dry := range []struct {
		cmd     contract.Command
		payload string
	}{
		{contract.CmdReloadSettings, `{"dry_run":true}`},
		{contract.CmdSwitchMode, `{"mode":"scalper-macdv","dry_run":true}`},
		{contract.CmdClearCache, `{"scope":"all","dry_run":true}`},
		{contract.CmdForceBackfill, `{"symbol":"BTC-USD","timeframes":["1h"],"dry_run":true}`},
	} {
		res := s.run(t, planUser, dry.cmd, dry.payload)
		ids = append(ids, res.ID)
		// Each is its command's plan type; the plans say what the real
		// commands would do.
		var plan contract.DryRunResult
		switch dry.cmd {
		case contract.CmdReloadSettings:
			plan = resultAs[contract.ReloadSettingsPlan](t, res).DryRunResult
		case contract.CmdSwitchMode:
			plan = resultAs[contract.SwitchModePlan](t, res).DryRunResult
		case contract.CmdClearCache:
			p := resultAs[contract.ClearCachePlan](t, res)
			if p.WouldDeleteCount != len(keys) {
				t.Errorf("clear-cache plan %s: want wouldDeleteCount %d, the user's keys", res.Result, len(keys))
			}
			plan = p.DryRunResult
		case contract.CmdForceBackfill:
			p := resultAs[contract.ForceBackfillPlan](t, res)
			if p.Pages < 1 {
				t.Errorf("force-backfill plan %s: want at least one page", res.Result)
			}
			plan = p.DryRunResult
		}
		if !plan.DryRun || contract.ValidatePlanHash(plan.Plan) != nil {
			t.Errorf("%s %s: result %s is not a plan with a hash", dry.cmd, dry.payload, res.Result)
		}
		if dry.cmd == contract.CmdReloadSettings || dry.cmd == contract.CmdSwitchMode {
			checkApplyPlans(t, dry.cmd, plan.Services)
		}
	}

	if r, v := s.stateEntry(t, planUser); r != revision || v != state {
		t.Errorf("the dry runs changed the desired state: revision %d → %d\n%s\n→\n%s", revision, r, state, v)
	}
	if d := diffSnapshots(keys, s.snapshot(t, userKeys(a))); d != "" {
		t.Errorf("the dry runs changed the user's Redis keys: %s", d)
	}
	if n := s.flowCounts(t, planUser, flow); n != [3]int{} {
		t.Errorf("the dry runs published %d candles, %d indicator updates, %d alerts of the user", n[0], n[1], n[2])
	}
	for _, m := range s.published(t, contract.StreamResults, "vigil.result."+planUser+".>", results) {
		id := m.Subject()[strings.LastIndex(m.Subject(), ".")+1:]
		if !slices.Contains(ids, id) {
			t.Errorf("a result other than the dry runs' own was published: %s", m.Subject())
		}
	}
}

// checkApplyPlans fails the test unless every instance's plan of apply is
// exactly its service's contract type (no member the type lacks) and one
// instance of each service owns the user.
func checkApplyPlans(t *testing.T, cmd contract.Command, services map[string]contract.InstancePlans) {
	t.Helper()
	owners := map[string]int{}
	for svc, plans := range services {
		for instance, raw := range plans {
			var owner bool
			var err error
			switch svc {
			case contract.SvcFeed.MicroName():
				p, e := contract.DecodeStrict[contract.FeedApplyPlan](raw)
				owner, err = p.Owner, e
			case contract.SvcIndicators.MicroName():
				p, e := contract.DecodeStrict[contract.IndicatorsPlan](raw)
				owner, err = p.Owner, e
			case contract.SvcAlerts.MicroName():
				p, e := contract.DecodeStrict[contract.AlertsApplyPlan](raw)
				owner, err = p.Owner, e
			default:
				t.Errorf("%s plan: unexpected service %s", cmd, svc)
			}
			if err != nil {
				t.Errorf("%s plan of %s %s: %v: %s", cmd, svc, instance, err, raw)
			}
			if owner {
				owners[svc]++
			}
		}
	}
	for _, svc := range []contract.Svc{contract.SvcFeed, contract.SvcIndicators, contract.SvcAlerts} {
		if owners[svc.MicroName()] != 1 {
			t.Errorf("%s plan: %d instances of %s own the user, want 1: %v", cmd, owners[svc.MicroName()], svc.MicroName(), services[svc.MicroName()])
		}
	}
}
