package monitor

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/alerts/internal/rules"
)

// verbUser takes st (the desired state control has just written), when
// given and not older than the one held, and returns the user locked. The
// caller unlocks it.
func (m *Monitor) verbUser(user string, st *contract.DesiredState) (*user, error) {
	if err := contract.ValidateUserToken(user); err != nil {
		return nil, err
	}
	if st != nil && st.User != user {
		return nil, contract.FieldError{Field: "state.user", Problem: fmt.Sprintf("%q is not the request's user %q", st.User, user)}
	}
	us := m.userFor(user)
	us.mu.Lock()
	switch {
	case st != nil && us.accept(*st):
		us.desired, us.known = *st, true
	case !us.known:
		us.desired, us.known = contract.DesiredState{User: user}, true
	}
	return us, nil
}

// Pause stops evaluating user (idempotent). st, when given, is the desired
// state control has just written.
func (m *Monitor) Pause(ctx context.Context, user string, st *contract.DesiredState) (contract.AlertsVerbResult, error) {
	us, err := m.verbUser(user, st)
	if err != nil {
		return contract.AlertsVerbResult{}, err
	}
	defer us.mu.Unlock()
	us.desired.Paused = true
	if !m.deps.Ownership.Owns(user) {
		m.loseLocked(us, "owned by another instance")
		return contract.AlertsVerbResult{}, nil
	}
	if !us.active {
		if err := m.gainLocked(ctx, us, false); err != nil {
			return contract.AlertsVerbResult{}, err
		}
		return contract.AlertsVerbResult{OwnerReply: contract.OwnerReply{Owner: true}, Status: contract.AlertsPaused}, nil
	}
	if us.paused {
		return contract.AlertsVerbResult{OwnerReply: contract.OwnerReply{Owner: true}, Status: contract.AlertsAlreadyPaused}, nil
	}
	m.pauseLocked(ctx, us)
	return contract.AlertsVerbResult{OwnerReply: contract.OwnerReply{Owner: true}, Status: contract.AlertsPaused}, nil
}

// Resume starts evaluating user again (idempotent): the rules forget their
// remembered values and fire only on bars seen from now on.
func (m *Monitor) Resume(ctx context.Context, user string, st *contract.DesiredState) (contract.AlertsVerbResult, error) {
	us, err := m.verbUser(user, st)
	if err != nil {
		return contract.AlertsVerbResult{}, err
	}
	defer us.mu.Unlock()
	us.desired.Paused = false
	if !m.deps.Ownership.Owns(user) {
		m.loseLocked(us, "owned by another instance")
		return contract.AlertsVerbResult{}, nil
	}
	if !us.active {
		// Gain paused, without catch-up: the restored memory may predate
		// the pause, and resuming must not fire on what happened meanwhile.
		us.desired.Paused = true
		err := m.gainLocked(ctx, us, false)
		us.desired.Paused = false
		if err != nil {
			return contract.AlertsVerbResult{}, err
		}
	}
	if !us.paused {
		return contract.AlertsVerbResult{OwnerReply: contract.OwnerReply{Owner: true}, Status: contract.AlertsAlreadyRunning}, nil
	}
	m.resumeLocked(ctx, us)
	return contract.AlertsVerbResult{OwnerReply: contract.OwnerReply{Owner: true}, Status: contract.AlertsResumed}, nil
}

// Apply installs the rules of st's mode (st defaults to the desired state
// held). Invalid rules are rejected as a whole with an error that wraps
// contract.ErrInvalid and names each rule and field; the running rules
// stay, and so does the desired state held before.
func (m *Monitor) Apply(ctx context.Context, user string, st *contract.DesiredState) (contract.AlertsVerbResult, error) {
	if st == nil && m.lookup(user) == nil {
		return contract.AlertsVerbResult{}, contract.FieldError{Field: "state", Problem: "is required: no desired state is known for " + user}
	}
	us, err := m.verbUser(user, nil)
	if err != nil {
		return contract.AlertsVerbResult{}, err
	}
	defer us.mu.Unlock()
	before := us.desired
	if st != nil {
		if st.User != user {
			return contract.AlertsVerbResult{}, contract.FieldError{Field: "state.user", Problem: fmt.Sprintf("%q is not the request's user %q", st.User, user)}
		}
		if us.accept(*st) {
			us.desired = *st
		}
	}
	if !m.deps.Ownership.Owns(user) {
		m.loseLocked(us, "owned by another instance")
		return contract.AlertsVerbResult{}, nil
	}
	want := desiredRules(us.desired)
	if !us.active {
		err = m.gainLocked(ctx, us, !us.desired.Paused)
		if err == nil && us.rulesErr != nil {
			err = fmt.Errorf("rules of mode %s, revision %d: %w", want.mode, want.revision, us.rulesErr)
		}
	} else {
		err = m.applyLocked(ctx, us, want)
	}
	if err != nil {
		// A refused state does not become the desired one, so that a later
		// gain does not start with rules that were rejected.
		us.desired = before
		return contract.AlertsVerbResult{}, err
	}
	n := len(us.applied.rules)
	return contract.AlertsVerbResult{OwnerReply: contract.OwnerReply{Owner: true}, Status: contract.AlertsApplied, Mode: us.applied.mode, Revision: us.applied.revision, Rules: &n}, nil
}

// publishInfo refreshes the user's status mirror; call it under us.mu
// after a change.
func (m *Monitor) publishInfo(us *user) {
	if !us.active {
		us.info.Store(nil)
		return
	}
	info := &contract.AlertsUserStatus{Paused: us.paused, Mode: us.applied.mode, Revision: us.applied.revision, RulesLoaded: len(us.applied.rules)}
	if us.rulesErr != nil {
		info.RulesError = us.rulesErr.Error()
	}
	us.info.Store(info)
}

// Status reports every user this instance runs, by token. It never waits
// for work in progress.
func (m *Monitor) Status() map[string]contract.AlertsUserStatus {
	m.mu.Lock()
	users := slices.Collect(maps.Values(m.users))
	m.mu.Unlock()
	out := make(map[string]contract.AlertsUserStatus, len(users))
	for _, us := range users {
		info := us.info.Load()
		if info == nil {
			continue
		}
		s := *info
		s.Evaluations, s.AlertsFired, s.AlertsSuppressed = us.evaluations.Load(), us.fired.Load(), us.suppressed.Load()
		if ns := us.lastEval.Load(); ns != 0 {
			t := time.Unix(0, ns).UTC()
			s.LastEvaluation = &t
		}
		if start := us.lastBar.Load(); start != 0 {
			t := time.Unix(start, 0).UTC()
			s.LastBar = &t
		}
		out[us.token] = s
	}
	return out
}

// PlanApply is what Apply(user, st) would do, computed with Apply's
// rules (which state is taken, gain or Replace, rule validation) and
// changing nothing. Rules Apply would reject are the same error.
func (m *Monitor) PlanApply(user string, st contract.DesiredState) (contract.AlertsApplyPlan, error) {
	if err := contract.ValidateUserToken(user); err != nil {
		return contract.AlertsApplyPlan{}, err
	}
	if st.User != user {
		return contract.AlertsApplyPlan{}, contract.FieldError{Field: "state.user", Problem: fmt.Sprintf("%q is not the request's user %q", st.User, user)}
	}
	if !m.deps.Ownership.Owns(user) {
		return contract.AlertsApplyPlan{}, nil
	}
	active := false
	want := desiredRules(st)
	var plan contract.RulesPlan
	var err error
	if us := m.lookup(user); us != nil {
		us.mu.Lock()
		defer us.mu.Unlock()
		if us.known && !us.accept(st) {
			want = desiredRules(us.desired)
		}
		if active = us.active; active {
			plan, err = us.engine.PlanReplace(want.rules)
		}
	}
	if !active {
		plan, err = rules.PlanNew(want.rules)
	}
	if err != nil {
		return contract.AlertsApplyPlan{}, fmt.Errorf("rules of mode %s, revision %d: %w", want.mode, want.revision, err)
	}
	return contract.AlertsApplyPlan{Owner: true, Mode: want.mode, Revision: want.revision, Gain: !active, Rules: &plan}, nil
}
