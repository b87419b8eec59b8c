package contract

import (
	"encoding/json"
	"fmt"
	"regexp"
)

// Planning is the dry-run part of the payloads of reload-settings,
// switch-mode, clear-cache and force-backfill (ARCHITECTURE.md §5): with
// DryRun the command is validated and queued like the real one, changes
// nothing, and its result is the plan with a plan hash; with Plan the real
// command fails with conflict when the inputs of that plan changed since.
type Planning struct {
	DryRun bool   `json:"dry_run,omitempty"`
	Plan   string `json:"plan,omitempty"`
}

// PlanHashLength is the length of a plan hash: 64 lowercase hex digits
// (SHA-256).
const PlanHashLength = 64

var planHashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ValidatePlanHash checks a plan hash as a dry run returns it.
func ValidatePlanHash(h string) error {
	if !planHashRE.MatchString(h) {
		return FieldError{Field: "plan", Problem: fmt.Sprintf("%q is not a plan hash (64 lowercase hex digits, as a dry run returns it)", h)}
	}
	return nil
}

// Planned reports the dry-run fields of a payload; every payload that
// embeds Planning has it.
type Planned interface {
	Planned() Planning
}

// Planned implements Planned.
func (p Planning) Planned() Planning { return p }

// validate checks the dry-run fields: a well-formed plan hash, and not
// both (a dry run checks no plan).
func (p Planning) validate(f *fieldErrs) {
	if p.Plan != "" {
		f.check("plan", ValidatePlanHash(p.Plan))
		if p.DryRun {
			f.add("dry_run", "cannot be given with plan (a dry run makes a plan, the real command checks one)")
		}
	}
}

// PlanArgs are the args of vigil.svc.<service>.plan: the verb whose plan
// is asked for and that verb's args. The service answers what the verb
// would do on this instance, computed by the verb's own code, and changes
// nothing. The request's State is the state the verb would be sent.
type PlanArgs struct {
	Verb Verb            `json:"verb"`
	Args json.RawMessage `json:"args,omitempty"`
}

// The services' answers to vigil.svc.<service>.plan (each in a SvcReply's
// Result; vigil-feed's plan of backfill is FeedBackfillPlan). An instance
// that does not own the user answers {"owner":false}. Control passes them
// through into a dry run's DryRunResult.Services.

// FeedApplyPlan is vigil-feed's plan of apply: what apply of the request's
// state would change on the owning instance.
type FeedApplyPlan struct {
	Owner bool `json:"owner"`
	// Subscribe and Unsubscribe are the user's symbols the instance would
	// attach and detach.
	Subscribe   []string `json:"subscribe"`
	Unsubscribe []string `json:"unsubscribe"`
	// Level2On and Level2Off are the symbols whose order-book (level2)
	// channel would be switched on and off.
	Level2On  []string `json:"level2_on"`
	Level2Off []string `json:"level2_off"`
	// Symbols are the symbols the user would have; Paused whether the
	// state is paused.
	Symbols []string `json:"symbols"`
	Paused  bool     `json:"paused"`
}

// IndicatorsPlan is vigil-indicators' plan of apply, forget or recompute:
// what the verb would do to the instance's series of the user. Series are
// named by SeriesID.String.
type IndicatorsPlan struct {
	// Owner is true when this instance runs or would run some of the
	// user's series.
	Owner bool `json:"owner"`
	// Created are series that would be built from Redis, Recomputed
	// those rebuilt for a changed indicator set, Dropped those removed
	// from memory, KeptPaused those kept over a pause.
	Created    []string `json:"created"`
	Recomputed []string `json:"recomputed"`
	Dropped    []string `json:"dropped"`
	KeptPaused []string `json:"kept_paused,omitempty"`
	// Series is how many of the user's series would run here afterwards.
	Series int `json:"series"`
	// Warning names indicators the plan would leave out.
	Warning string `json:"warning,omitempty"`
}

// AlertsApplyPlan is vigil-alerts' plan of apply for one user.
type AlertsApplyPlan struct {
	Owner bool `json:"owner"`
	// Mode and Revision name the rule set apply would install; Gain is
	// true when the instance would start evaluating the user.
	Mode     Mode  `json:"mode,omitempty"`
	Revision int64 `json:"revision,omitempty"`
	Gain     bool  `json:"gain,omitempty"`
	// Rules are the rule ids added, changed and removed.
	Rules *RulesPlan `json:"rules,omitempty"`
}

// RulesPlan is what replacing a user's rule set would change: the ids of
// the rules added, changed (same id, another definition) and removed.
type RulesPlan struct {
	Added   []string `json:"added"`
	Changed []string `json:"changed"`
	Removed []string `json:"removed"`
}
