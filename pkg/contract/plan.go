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
