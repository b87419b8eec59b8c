package series

import (
	"fmt"
	"slices"

	"vigil.dev/pkg/contract"
)

// This file: the verbs' plans (contract.IndicatorsPlan), computed by each
// verb's own rules (fateOf, runsFor, the forget selector) without changing
// anything: the indicators' part of a dry run.

func newSeriesPlan() contract.IndicatorsPlan {
	return contract.IndicatorsPlan{Created: []string{}, Recomputed: []string{}, Dropped: []string{}}
}

// sortPlan orders p's lists and sets its Owner.
func sortPlan(p *contract.IndicatorsPlan) {
	for _, l := range [][]string{p.Created, p.Recomputed, p.Dropped, p.KeptPaused} {
		slices.Sort(l)
	}
	p.Owner = p.Owner || p.Series+len(p.Dropped)+len(p.KeptPaused) > 0
}

// PlanApply is what Apply(st) would do here: the fate of each of the
// user's series in memory under st, and the series st adds.
func (e *Engine) PlanApply(token string, st contract.DesiredState) (contract.IndicatorsPlan, error) {
	if st.User != token {
		return contract.IndicatorsPlan{}, contract.FieldError{Field: "state.user", Problem: fmt.Sprintf("%q is not the request's user %q", st.User, token)}
	}
	if err := st.Validate(); err != nil {
		return contract.IndicatorsPlan{}, fmt.Errorf("%w of %q: %w", ErrState, st.User, err)
	}
	p := newSeriesPlan()
	u, err := newUser(st)
	if err != nil {
		p.Warning = err.Error()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if cur := e.users[token]; cur != nil && st.UpdatedAt.Before(cur.state.UpdatedAt) {
		u = cur // SetState ignores an older state and converges the known one
	}
	for id, s := range e.series {
		if id.User != token {
			continue
		}
		switch e.fateOf(u, id, s) {
		case fateKeep:
			p.Series++
		case fateKeepPaused:
			p.KeptPaused = append(p.KeptPaused, id.String())
		case fateDrop:
			p.Dropped = append(p.Dropped, id.String())
		case fateReplan:
			p.Recomputed = append(p.Recomputed, id.String())
			p.Series++
		}
	}
	for id := range e.books {
		if id.User != token {
			continue
		}
		if e.runsBookFor(u, id) {
			p.Series++
		} else {
			p.Dropped = append(p.Dropped, id.String())
		}
	}
	for _, id := range u.seriesIDs() {
		if e.runsFor(u, id) && e.series[id] == nil && !e.isForgotten(id) {
			p.Created = append(p.Created, id.String())
			p.Series++
		}
	}
	sortPlan(&p)
	return p, nil
}

// PlanForget is what Forget(args) would drop here.
func (e *Engine) PlanForget(args contract.ForgetArgs) (contract.IndicatorsPlan, error) {
	sel := args.Selector()
	if err := sel.Validate(); err != nil {
		return contract.IndicatorsPlan{}, err
	}
	p := newSeriesPlan()
	e.mu.Lock()
	defer e.mu.Unlock()
	for id := range e.series {
		if sel.Matches(id) {
			p.Dropped = append(p.Dropped, id.String())
		}
	}
	for id := range e.books {
		if sel.Matches(id) {
			p.Dropped = append(p.Dropped, id.String())
		}
	}
	sortPlan(&p)
	return p, nil
}

// PlanRecompute is what Recompute(id) would do here: on the owner, the
// series is rebuilt (Recomputed) when it is in its user's plan.
func (e *Engine) PlanRecompute(id contract.SeriesID) (contract.IndicatorsPlan, error) {
	if err := id.Validate(); err != nil {
		return contract.IndicatorsPlan{}, fmt.Errorf("series: %w", err)
	}
	p := newSeriesPlan()
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.owner.Owns(id.String()) {
		return p, nil
	}
	p.Owner = true
	if u := e.users[id.User]; u != nil && len(u.plan.Candle) > 0 && u.inPlan(id) {
		p.Recomputed = append(p.Recomputed, id.String())
	}
	return p, nil
}
