package daemon

import (
	"context"
	"fmt"
	"slices"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/feed/internal/candles"
)

// plan answers vigil.svc.feed.plan: what apply or backfill would do here,
// computed by their own code, changing nothing.
func (f *feed) plan(_ context.Context, req contract.SvcRequest) (any, error) {
	args, err := contract.DecodePeer[contract.PlanArgs](orEmpty(req.Args))
	if err != nil {
		return nil, err
	}
	if err := contract.ValidateUserToken(req.User); err != nil {
		return nil, err
	}
	switch args.Verb {
	case contract.VerbApply:
		return f.planApply(req)
	case contract.VerbBackfill:
		b, err := contract.DecodePeer[contract.BackfillArgs](orEmpty(args.Args))
		if err != nil {
			return nil, fmt.Errorf("args.args: %w", err)
		}
		return f.planBackfillReply(req.User, b)
	}
	return nil, contract.FieldError{Field: "args.verb", Problem: fmt.Sprintf("%q has no plan in vigil-feed (apply, backfill)", args.Verb)}
}

// planApply is apply's plan: the convergence of a copy of the user with
// req.State taken as apply takes it.
func (f *feed) planApply(req contract.SvcRequest) (any, error) {
	if req.State == nil {
		return nil, contract.FieldError{Field: "state", Problem: "is required"}
	}
	if err := req.State.ValidateFor(req.User); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.owns(req.User) {
		return notOwner, nil
	}
	u := &user{attached: map[string]candles.Subscriber{}}
	if cur := f.users[req.User]; cur != nil {
		c := *cur
		u = &c
	}
	f.setStateLocked(u, *req.State) // a copy: u.attached is only read
	p := f.planConvergeLocked(req.User, u)
	out := contract.FeedApplyPlan{Owner: true, Subscribe: []string{}, Unsubscribe: []string{}, Level2On: []string{}, Level2Off: []string{},
		Symbols: slices.Clone(u.state.Symbols), Paused: u.state.Paused}
	if p.stop {
		for _, sym := range sortedKeys(u.attached) {
			out.Unsubscribe = append(out.Unsubscribe, sym)
			if u.attached[sym].Book {
				out.Level2Off = append(out.Level2Off, sym)
			}
		}
		return out, nil
	}
	for _, sym := range p.detach {
		out.Unsubscribe = append(out.Unsubscribe, sym)
		if u.attached[sym].Book {
			out.Level2Off = append(out.Level2Off, sym)
		}
	}
	for _, sub := range p.rebook {
		if sub.Book {
			out.Level2On = append(out.Level2On, sub.Symbol)
		} else {
			out.Level2Off = append(out.Level2Off, sub.Symbol)
		}
	}
	for _, sub := range p.attach {
		out.Subscribe = append(out.Subscribe, sub.Symbol)
		if sub.Book {
			out.Level2On = append(out.Level2On, sub.Symbol)
		}
	}
	return out, nil
}

// planBackfillReply is backfill's plan: the pages planBackfill counts, the
// requests they take and their time at the source's rate limit.
func (f *feed) planBackfillReply(token string, a contract.BackfillArgs) (any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.owns(token) {
		return notOwner, nil
	}
	plan, err := f.planBackfill(token, a)
	if err != nil {
		return nil, err
	}
	rate := f.eng.Source().Caps().HistoryRate
	out := contract.FeedBackfillPlan{OwnerReply: contract.OwnerReply{Owner: true}, Pages: plan.pages, Requests: plan.pages, RatePerSecond: rate, Ranges: []contract.FeedPlanRange{}}
	if rate > 0 {
		out.EstimatedSeconds = float64(out.Requests) / rate
	}
	for _, r := range plan.ranges {
		out.Ranges = append(out.Ranges, contract.FeedPlanRange{Timeframe: r.tf, From: r.from, To: r.to, Pages: r.pages})
	}
	return out, nil
}
