package sequences

import (
	"reflect"
	"testing"

	"vigil.dev/pkg/contract"
)

// outcomes builds a step of svc.verb whose instances answered as given
// ("a" answered, "f" failed, "m" missing).
func outcomes(svc contract.Svc, verb contract.Verb, compensation bool, by map[string]string) contract.Step {
	s := contract.Step{Service: svc.MicroName(), Verb: verb, Compensation: compensation}
	for _, id := range []string{"i1", "i2", "i3"} {
		switch by[id] {
		case "a":
			s.Outcomes = append(s.Outcomes, contract.InstanceOutcome{Instance: id, Outcome: contract.InstanceAnswered})
		case "f":
			s.Outcomes = append(s.Outcomes, contract.InstanceOutcome{Instance: id, Outcome: contract.InstanceFailed, Error: &contract.Error{Code: contract.CodeInternal}})
		case "m":
			s.Outcomes = append(s.Outcomes, contract.InstanceOutcome{Instance: id, Outcome: contract.InstanceMissing, Error: &contract.Error{Code: contract.CodeTimeout}})
		}
	}
	return s
}

// TestCompensation checks which steps undo which forward steps: last
// first, apply again, resume a quiesce unless the user stays paused,
// pause a resume, nothing for a step no instance confirmed.
func TestCompensation(t *testing.T) {
	all := map[string]string{"i1": "a", "i2": "a"}
	none := map[string]string{"i1": "f", "i2": "m"}
	spec := func(svc contract.Svc, verb contract.Verb) stepSpec { return stepSpec{svc, verb} }
	for _, tc := range []struct {
		name   string
		specs  []stepSpec
		by     []map[string]string
		paused bool
		want   []compStep
	}{
		{"reload fails at indicators, one moved", applySteps[:2], []map[string]string{all, {"i1": "a", "i2": "f"}}, false,
			[]compStep{{spec(contract.SvcIndicators, contract.VerbApply), []string{"i1"}}, {spec(contract.SvcFeed, contract.VerbApply), []string{"i1", "i2"}}}},
		{"a step nobody confirmed needs nothing", applySteps[:2], []map[string]string{all, none}, false,
			[]compStep{{spec(contract.SvcFeed, contract.VerbApply), []string{"i1", "i2"}}}},
		{"switch-mode fails at alerts.apply", switchModeSteps(false)[:4], []map[string]string{all, all, all, none}, false,
			[]compStep{{spec(contract.SvcIndicators, contract.VerbApply), []string{"i1", "i2"}}, {spec(contract.SvcFeed, contract.VerbApply), []string{"i1", "i2"}},
				{spec(contract.SvcAlerts, contract.VerbResume), []string{"i1", "i2"}}}},
		{"switch-mode of a paused user keeps alerts paused", switchModeSteps(true)[:3], []map[string]string{all, all, none}, true,
			[]compStep{{spec(contract.SvcFeed, contract.VerbApply), []string{"i1", "i2"}}}},
		{"switch-mode fails at alerts.resume", switchModeSteps(false), []map[string]string{all, all, all, all, {"i1": "a", "i2": "m"}}, false,
			[]compStep{{spec(contract.SvcAlerts, contract.VerbPause), []string{"i1"}}, {spec(contract.SvcAlerts, contract.VerbApply), []string{"i1", "i2"}},
				{spec(contract.SvcIndicators, contract.VerbApply), []string{"i1", "i2"}}, {spec(contract.SvcFeed, contract.VerbApply), []string{"i1", "i2"}},
				{spec(contract.SvcAlerts, contract.VerbResume), []string{"i1", "i2"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var forward []contract.Step
			for i, s := range tc.specs {
				forward = append(forward, outcomes(s.svc, s.verb, false, tc.by[i]))
			}
			if got := compensation(tc.specs, forward, tc.paused); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("compensation = %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestInstanceRevisions checks the revision each instance is said to be
// on after a rollback from 8 back to 7.
func TestInstanceRevisions(t *testing.T) {
	steps := []contract.Step{
		outcomes(contract.SvcAlerts, contract.VerbPause, false, map[string]string{"i1": "a"}),
		outcomes(contract.SvcFeed, contract.VerbApply, false, map[string]string{"i1": "a", "i2": "a", "i3": "a"}),
		outcomes(contract.SvcIndicators, contract.VerbApply, false, map[string]string{"i1": "a", "i2": "f", "i3": "m"}),
		outcomes(contract.SvcIndicators, contract.VerbApply, true, map[string]string{"i1": "a", "i2": "a", "i3": "m"}),
		outcomes(contract.SvcFeed, contract.VerbApply, true, map[string]string{"i1": "a", "i2": "f", "i3": "m"}),
	}
	want := []contract.InstanceRevision{
		{Service: "vigil-feed", Instance: "i1", Revision: 7},
		{Service: "vigil-feed", Instance: "i2", Revision: 8}, // refused the old one
		{Service: "vigil-feed", Instance: "i3", Revision: 8}, // missed the old one
		{Service: "vigil-indicators", Instance: "i1", Revision: 7},
		{Service: "vigil-indicators", Instance: "i2", Revision: 7}, // refused the new one
		{Service: "vigil-indicators", Instance: "i3", Revision: 0}, // answered neither
	}
	if got := instanceRevisions(7, 8, steps); !reflect.DeepEqual(got, want) {
		t.Errorf("instanceRevisions = %+v\nwant %+v", got, want)
	}
}
