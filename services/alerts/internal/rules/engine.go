// Package rules evaluates one user's alert rules on indicator updates. It is
// pure: no I/O, the clock is injected, and the per-rule memory can be
// exported and restored (Snapshot, Restore) so that another instance can
// take the user over.
//
// # Which updates a rule sees
//
// A rule looks at updates of its Symbol and Timeframe only. Rules evaluated
// on "close" (the default) see closed bars only; "live" rules see every
// update, and compare an in-progress bar against the last closed bar.
//
// Only fresh data counts: an update is ignored, without touching any memory,
// when its reference time (the bar's end for a closed bar, its start for a
// live one) lies more than two bars of its timeframe before now. Exactly two
// bars old is still fresh. Updates of a bar older than the last closed bar a
// rule remembers are ignored too, and so are older versions of that bar.
//
// # Memory, gaps and priming
//
// Every kind compares the current bar with the previous one, so every rule
// remembers the values of the last two closed bars. A bar is compared only
// with the closed bar immediately before it (start minus one bar). When that
// bar is unknown, because the series has a gap, the value was missing or
// warming, or the memory was reset (ResetWarm, MarkStale, a changed
// definition, a fresh engine), the update fires nothing and, if closed, only
// primes the memory. So a rule fires at the earliest on the second
// consecutive fresh closed bar it sees, and a resume never fires on a
// transition that happened while nobody looked. An update whose value is
// missing (its indicator is listed in Warming, absent, or not finite) is
// not evaluated and leaves the memory as it was.
//
// A new version of the last remembered closed bar (a correction from a
// backfill) is evaluated again against the bar before it and replaces the
// remembered values; an equal version (a redelivery) is evaluated again and
// yields the same result, which the fired-bar memory then suppresses.
//
// # When a rule fires
//
//   - threshold and orderbook: above means value > threshold, below means
//     value < threshold; exactly at the threshold does not hold. The rule
//     fires when the condition holds and did not hold on the previous bar
//     (entering). With a cooldown above zero it also fires while the
//     condition keeps holding, at most once per cooldown (a reminder);
//     with cooldown 0 it fires only on entering.
//   - cross: crosses_above fires when previously a <= b and now a > b
//     (equal then greater is a cross, equal then equal is not);
//     crosses_below when previously a >= b and now a < b. b is the Other
//     series or the level Value.
//   - macdv_zone: fires when contract.ZoneOf of the MACD-V field (Field, or
//     "macd" when empty) differs from the previous bar's zone and the new
//     zone is Zone (or any zone when Zone is empty).
//
// A rule fires at most once per bar: the alert id is contract.AlertID of
// the user, the rule id and the bar start, and the engine remembers the
// start of the last bar a rule fired for. It never fires for that bar or an
// earlier one again, whether the same update is redelivered or a live rule
// sees many updates of one bar. A cooldown also suppresses every firing
// whose bar starts less than the cooldown after the last fired bar.
package rules

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"vigil.dev/pkg/contract"
)

// ErrInvalidRule is wrapped by every error about a rule the engine cannot
// evaluate. Such errors also wrap contract.ErrInvalid and carry
// contract.FieldErrors naming each problem.
var ErrInvalidRule = errors.New("invalid rule")

// Engine evaluates the alert rules of one user. It is safe for concurrent
// use; its methods serialise on one mutex.
type Engine struct {
	mu    sync.Mutex
	now   func() time.Time
	rules []*ruleState
}

// NewEngine builds an engine for rules, evaluated in the given order, with
// now as its clock (time.Now when nil). Every rule starts without memory.
// It fails with ErrInvalidRule when a rule cannot be evaluated or two rules
// share an id.
func NewEngine(rules []contract.Rule, now func() time.Time) (*Engine, error) {
	if now == nil {
		now = time.Now
	}
	states, err := newRuleStates(rules)
	if err != nil {
		return nil, err
	}
	return &Engine{now: now, rules: states}, nil
}

// Replace installs a new rule set (a new config revision or mode). A rule
// whose id and definition are unchanged keeps its memory. A rule whose
// definition changed keeps only its fired-bar memory, so it never fires
// twice for the same alert id, and needs fresh bars again. Removed rules are
// forgotten. On error nothing changes.
func (e *Engine) Replace(rules []contract.Rule) error {
	states, err := newRuleStates(rules)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	old := make(map[string]*ruleState, len(e.rules))
	for _, s := range e.rules {
		old[s.rule.ID] = s
	}
	for _, s := range states {
		if prev, ok := old[s.rule.ID]; ok {
			s.adopt(prev.mem)
		}
	}
	e.rules = states
	return nil
}

// PlanReplace validates rules as Replace does and returns what Replace
// would change, changing nothing.
func (e *Engine) PlanReplace(rules []contract.Rule) (contract.RulesPlan, error) {
	states, err := newRuleStates(rules)
	if err != nil {
		return contract.RulesPlan{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return planReplace(e.rules, states), nil
}

// PlanNew is PlanReplace for an engine that does not exist yet: every
// rule is added.
func PlanNew(rules []contract.Rule) (contract.RulesPlan, error) {
	states, err := newRuleStates(rules)
	if err != nil {
		return contract.RulesPlan{}, err
	}
	return planReplace(nil, states), nil
}

func planReplace(old, next []*ruleState) contract.RulesPlan {
	p := contract.RulesPlan{Added: []string{}, Changed: []string{}, Removed: []string{}}
	before := make(map[string]*ruleState, len(old))
	for _, s := range old {
		before[s.rule.ID] = s
	}
	kept := map[string]bool{}
	for _, s := range next {
		prev, ok := before[s.rule.ID]
		switch {
		case !ok:
			p.Added = append(p.Added, s.rule.ID)
		case prev.mem.Definition != s.mem.Definition:
			p.Changed = append(p.Changed, s.rule.ID)
		}
		kept[s.rule.ID] = true
	}
	for _, s := range old {
		if !kept[s.rule.ID] {
			p.Removed = append(p.Removed, s.rule.ID)
		}
	}
	slices.Sort(p.Added)
	slices.Sort(p.Changed)
	slices.Sort(p.Removed)
	return p
}

// Evaluate runs every matching rule on u and returns the alerts fired, in
// rule order (nil when none). The result depends only on the rules, their
// memory, u and the clock.
func (e *Engine) Evaluate(u contract.IndicatorUpdate) []contract.Alert {
	bar := u.Timeframe.Duration()
	if bar <= 0 {
		return nil
	}
	now := e.now()
	if isStale(u, bar, now) {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var alerts []contract.Alert
	for _, s := range e.rules {
		if a, ok := s.evaluate(u, bar, now); ok {
			alerts = append(alerts, a)
		}
	}
	return alerts
}

// MarkStale forgets the remembered values of the rules on symbol and tf,
// where an empty symbol or tf matches all, for example after a backfill or
// clear-cache replaced that series' history. Those rules need fresh bars
// again before they may fire. The fired-bar memory is kept.
func (e *Engine) MarkStale(symbol string, tf contract.Timeframe) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.rules {
		if (symbol == "" || s.rule.Symbol == symbol) && (tf == "" || s.rule.Timeframe == tf) {
			s.forgetValues()
		}
	}
}

// ResetWarm forgets the remembered values of every rule, on resume, restart
// or a mode switch, so that no rule fires before it has seen fresh bars
// again. The fired-bar memory is kept.
func (e *Engine) ResetWarm() { e.MarkStale("", "") }

// isStale reports whether u's reference time (the end of a closed bar, the
// start of a live one) is more than two bars before now.
func isStale(u contract.IndicatorUpdate, bar time.Duration, now time.Time) bool {
	ref := time.Unix(u.Start, 0)
	if u.Closed {
		ref = ref.Add(bar)
	}
	return now.Sub(ref) > 2*bar
}

// newRuleStates checks rules and gives each an empty memory.
func newRuleStates(rules []contract.Rule) ([]*ruleState, error) {
	var problems contract.FieldErrors
	seen := make(map[string]bool, len(rules))
	states := make([]*ruleState, 0, len(rules))
	for i, r := range rules {
		field := fmt.Sprintf("rules[%d]", i)
		if r.ID != "" {
			field = fmt.Sprintf("rules[%d](%s)", i, r.ID)
		}
		if seen[r.ID] {
			problems = append(problems, contract.FieldError{Field: field + ".id", Problem: fmt.Sprintf("%q is used twice", r.ID)})
		}
		seen[r.ID] = true
		var errs contract.FieldErrors
		errors.As(r.Validate(), &errs)
		for _, p := range errs {
			problems = append(problems, contract.FieldError{Field: field + "." + p.Field, Problem: p.Problem})
		}
		if len(errs) > 0 {
			continue
		}
		def, err := definitionOf(r)
		if err != nil {
			problems = append(problems, contract.FieldError{Field: field, Problem: err.Error()})
			continue
		}
		states = append(states, &ruleState{rule: r, mem: RuleMemory{Definition: def}})
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRule, problems)
	}
	return states, nil
}
