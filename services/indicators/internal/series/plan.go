package series

import (
	"fmt"
	"slices"

	"vigil.dev/pkg/contract"
)

// SeriesPlan is what a verb would do to this instance's series of a user,
// computed by the verb's own rules (fateOf, runsFor, the forget selector)
// without changing anything: the indicators' part of a dry run. Series
// are named by SeriesID.String.
type SeriesPlan struct {
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

func newSeriesPlan() SeriesPlan {
	return SeriesPlan{Created: []string{}, Recomputed: []string{}, Dropped: []string{}}
}

// sort orders the lists and sets Owner.
func (p *SeriesPlan) sort() {
	for _, l := range [][]string{p.Created, p.Recomputed, p.Dropped, p.KeptPaused} {
		slices.Sort(l)
	}
	p.Owner = p.Owner || p.Series+len(p.Dropped)+len(p.KeptPaused) > 0
}

// PlanApply is what Apply(st) would do here: the fate of each of the
// user's series in memory under st, and the series st adds.
func (e *Engine) PlanApply(token string, st contract.DesiredState) (SeriesPlan, error) {
	if st.User != token {
		return SeriesPlan{}, contract.FieldError{Field: "state.user", Problem: fmt.Sprintf("%q is not the request's user %q", st.User, token)}
	}
	if err := st.Validate(); err != nil {
		return SeriesPlan{}, fmt.Errorf("%w of %q: %w", ErrState, st.User, err)
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
	p.sort()
	return p, nil
}

// PlanForget is what Forget(args) would drop here.
func (e *Engine) PlanForget(args contract.ForgetArgs) (SeriesPlan, error) {
	sel := args.Selector()
	if err := sel.Validate(); err != nil {
		return SeriesPlan{}, err
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
	p.sort()
	return p, nil
}

// PlanRecompute is what Recompute(id) would do here: on the owner, the
// series is rebuilt (Recomputed) when it is in its user's plan.
func (e *Engine) PlanRecompute(id contract.SeriesID) (SeriesPlan, error) {
	if err := id.Validate(); err != nil {
		return SeriesPlan{}, fmt.Errorf("series: %w", err)
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
