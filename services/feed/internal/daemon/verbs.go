package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/service"
	"vigil.dev/services/feed/internal/candles"
)

// ownerReply starts the result of the user's owner.
var ownerReply = contract.OwnerReply{Owner: true}

// notOwner is every verb's answer from an instance that does not own the user.
var notOwner = contract.OwnerReply{}

// ErrNoState means a verb that needs the user's desired state got none and
// the instance knows none.
var ErrNoState = errors.New("no desired state for the user")

// verbs are the control verbs of the feed (besides status).
var verbs = []contract.Verb{contract.VerbPause, contract.VerbResume, contract.VerbApply, contract.VerbBackfill, contract.VerbCancel, contract.VerbPlan}

// cancelGrace is how long a cancelled backfill may take to write the page
// it works on before its context is cancelled outright.
const cancelGrace = 3 * time.Second

// register gives the control verbs their handlers.
func (f *feed) register(svc *service.Service) error {
	handlers := map[contract.Verb]service.Handler{
		contract.VerbPause:    f.pause,
		contract.VerbResume:   f.resume,
		contract.VerbApply:    f.apply,
		contract.VerbBackfill: f.backfill,
		contract.VerbCancel:   f.cancel,
		contract.VerbPlan:     f.plan,
	}
	for _, verb := range verbs {
		if err := svc.Handle(verb, handlers[verb]); err != nil {
			return err
		}
	}
	return nil
}

// takeStateLocked records req.State (validated) when present, or applies
// change to the known state; it errors when neither gives a state.
func (f *feed) takeStateLocked(req contract.SvcRequest, change func(*contract.DesiredState)) (*user, error) {
	if err := contract.ValidateUserToken(req.User); err != nil {
		return nil, err
	}
	u := f.userLocked(req.User)
	switch {
	case req.State != nil:
		if err := req.State.ValidateFor(req.User); err != nil {
			return nil, err
		}
		f.setStateLocked(u, *req.State)
	case u.known:
		s := u.state
		change(&s)
		f.setStateLocked(u, s)
	default:
		if change != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoState, contract.FieldError{Field: "state", Problem: "is required: no desired state of " + req.User + " is known"})
		}
	}
	return u, nil
}

// pause stops the user's symbols, boundary REST and jobs, and answers once
// nothing more is written for the user (the flush in progress and the
// cancelled jobs have returned).
func (f *feed) pause(ctx context.Context, req contract.SvcRequest) (any, error) {
	f.mu.Lock()
	u, err := f.takeStateLocked(req, func(s *contract.DesiredState) { s.Paused = true })
	if errors.Is(err, ErrNoState) {
		err = nil // nothing runs for an unknown user: paused already
		u = f.userLocked(req.User)
	}
	if err != nil {
		f.mu.Unlock()
		return nil, err
	}
	owner := f.owns(req.User)
	if req.State == nil {
		u.state.Paused = true
	}
	jobs := runningJobsLocked(u)
	symbols := slices.Clone(u.state.Symbols)
	f.convergeLocked(req.User)
	f.mu.Unlock()
	if !owner {
		return notOwner, nil
	}
	f.eng.Quiesce()
	for _, done := range jobs {
		select {
		case <-done:
		case <-ctx.Done():
			return nil, &contract.Error{Code: contract.CodeTimeout, Message: "cancelled jobs did not stop: " + ctx.Err().Error()}
		}
	}
	return contract.FeedPauseResult{OwnerReply: ownerReply, Paused: true, Symbols: symbols}, nil
}

// resume resubscribes State.Symbols and answers once the gap since the last
// stored candles is filled.
func (f *feed) resume(ctx context.Context, req contract.SvcRequest) (any, error) {
	f.mu.Lock()
	u, err := f.takeStateLocked(req, func(s *contract.DesiredState) { s.Paused = false })
	if err != nil {
		f.mu.Unlock()
		return nil, err
	}
	if !f.owns(req.User) {
		f.convergeLocked(req.User)
		f.mu.Unlock()
		return notOwner, nil
	}
	if u.state.Paused {
		f.mu.Unlock()
		return nil, &contract.Error{Code: contract.CodeConflict, Message: "the desired state of " + req.User + " is paused"}
	}
	f.convergeLocked(req.User)
	job, symbols := u.fill, slices.Clone(u.state.Symbols)
	f.mu.Unlock()
	out := contract.FeedResumeResult{OwnerReply: ownerReply, Symbols: symbols, GapFilled: contract.GapFill{}}
	if job == nil {
		return out, nil
	}
	select {
	case <-job.done:
	case <-ctx.Done():
		return nil, &contract.Error{Code: contract.CodeTimeout, Message: "gap fill did not finish: " + ctx.Err().Error()}
	}
	out.GapFilled, out.GapFillErrors = job.result, job.errs
	return out, nil
}

// apply takes a new configuration revision: symbol diff and book channel.
func (f *feed) apply(_ context.Context, req contract.SvcRequest) (any, error) {
	if req.State == nil {
		return nil, contract.FieldError{Field: "state", Problem: "is required"}
	}
	f.mu.Lock()
	u, err := f.takeStateLocked(req, nil)
	if err != nil {
		f.mu.Unlock()
		return nil, err
	}
	f.convergeLocked(req.User)
	if !f.owns(req.User) {
		f.mu.Unlock()
		return notOwner, nil
	}
	added, removed := []string{}, []string{}
	if u.diff.revision == req.State.Revision {
		added, removed = u.diff.added, u.diff.removed
	}
	out := contract.FeedApplyResult{OwnerReply: ownerReply, Added: added, Removed: removed, Symbols: slices.Clone(u.state.Symbols),
		Book: u.state.Mode.UsesOrderBook() && !u.state.Paused, Paused: u.state.Paused}
	f.mu.Unlock()
	// As in pause: a flush that collected candles or book snapshots of
	// removed symbols or of a book channel now off publishes them before
	// the answer, never after it.
	f.eng.Quiesce()
	return out, nil
}

// backfill runs a backfill job for the owner: history pages of each
// timeframe, versioned writes, a progress event per page.
func (f *feed) backfill(ctx context.Context, req contract.SvcRequest) (any, error) {
	args, err := contract.DecodePeer[contract.BackfillArgs](orEmpty(req.Args))
	if err != nil {
		return nil, err
	}
	// The args say everything the job needs; the desired state, if sent,
	// arrives through the KV watch like any other change.
	f.mu.Lock()
	if !f.owns(req.User) {
		f.mu.Unlock()
		return notOwner, nil
	}
	plan, err := f.planBackfill(req.User, args)
	if err != nil {
		f.mu.Unlock()
		return nil, err
	}
	u := f.userLocked(req.User)
	jobCtx, j, done := f.addBackfillLocked(u, ctx, req.CommandID, plan.pages)
	f.mu.Unlock()
	defer done()
	jobCtx, cancel := context.WithTimeout(jobCtx, f.cfg.BackfillMax)
	defer cancel()
	return f.runBackfill(jobCtx, cancel, req, plan, j)
}

// cancel stops the user's backfill jobs of args.command_id that run here
// (owner or not: a job may outlive its instance's ownership) once the
// page each works on is written, and answers how far each got.
func (f *feed) cancel(ctx context.Context, req contract.SvcRequest) (any, error) {
	args, err := contract.DecodePeer[contract.CancelArgs](orEmpty(req.Args))
	if err != nil {
		return nil, err
	}
	if err := contract.ValidateUserToken(req.User); err != nil {
		return nil, err
	}
	if err := contract.ValidateCommandID(args.CommandID); err != nil {
		return nil, contract.FieldError{Field: "command_id", Problem: err.Error()}
	}
	f.mu.Lock()
	owner := f.owns(req.User)
	var jobs []*job
	if u := f.users[req.User]; u != nil {
		for _, j := range u.jobs {
			if j.command == args.CommandID {
				j.askStop()
				jobs = append(jobs, j)
			}
		}
	}
	jobs = append(jobs, f.takeStoppedLocked(req.User, args.CommandID)...)
	f.mu.Unlock()
	stopped := []contract.JobProgress{}
	for _, j := range jobs {
		select {
		case <-j.done:
		case <-time.After(cancelGrace):
			j.cancel()
			select {
			case <-j.done:
			case <-ctx.Done():
				return nil, &contract.Error{Code: contract.CodeTimeout, Message: "cancelled backfill did not stop: " + ctx.Err().Error()}
			}
		case <-ctx.Done():
			return nil, &contract.Error{Code: contract.CodeTimeout, Message: "cancelled backfill did not stop: " + ctx.Err().Error()}
		}
		stopped = append(stopped, j.progress())
	}
	return contract.FeedCancelResult{OwnerReply: contract.OwnerReply{Owner: owner}, Stopped: stopped}, nil
}

func orEmpty(b json.RawMessage) []byte {
	if len(b) == 0 {
		return []byte("{}")
	}
	return b
}

// backfillPlan is a validated backfill: the series and the range per timeframe.
type backfillPlan struct {
	sub      candles.Subscriber
	progress string
	ranges   []tfRange
	pages    int
}

type tfRange struct {
	tf       contract.Timeframe
	from, to time.Time
	pages    int
}

// planBackfill validates the args and computes the ranges and page count.
func (f *feed) planBackfill(token string, a contract.BackfillArgs) (backfillPlan, error) {
	var problems contract.FieldErrors
	add := func(field, format string, args ...any) {
		problems = append(problems, contract.FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
	}
	sub := candles.Subscriber{User: token, UserID: a.UserID, ExchangeID: a.ExchangeID, Symbol: a.Symbol}
	if err := sub.Series(contract.TF1m).Validate(); err != nil {
		var fes contract.FieldErrors
		if errors.As(err, &fes) {
			problems = append(problems, fes...)
		} else {
			add("args", "%v", err)
		}
	}
	prefix := contract.ProgressSubject(token, "")
	if !strings.HasPrefix(a.ProgressSubject, prefix) || strings.ContainsAny(a.ProgressSubject[min(len(prefix), len(a.ProgressSubject)):], "*> \t\r\n.") || len(a.ProgressSubject) == len(prefix) {
		add("progress_subject", "%q is not %s<id>", a.ProgressSubject, prefix)
	}
	src := f.eng.Source()
	tfs := a.Timeframes
	if len(tfs) == 0 {
		tfs = src.Caps().Timeframes
	}
	// The args are wall-clock times; a source whose clock runs apart
	// (sim ahead, replay behind) reads them shifted by the difference, so
	// "the last N bars" means its last N bars.
	shift := clockShift(src.Now(), time.Now())
	to := a.To.Add(shift)
	if a.To.IsZero() {
		to = src.Now()
	}
	plan := backfillPlan{sub: sub, progress: a.ProgressSubject}
	for i, tf := range tfs {
		if err := tf.Validate(); err != nil {
			add(fmt.Sprintf("timeframes[%d]", i), "%v", err)
			continue
		}
		if !slices.Contains(src.Caps().Timeframes, tf) {
			add(fmt.Sprintf("timeframes[%d]", i), "the %s source has no %s bars", src.Name(), tf)
			continue
		}
		from := a.From.Add(shift)
		if a.From.IsZero() {
			from = to.Add(-time.Duration(f.cfg.Retention) * tf.Duration())
		}
		if !from.Before(to) {
			add("from", "%v is not before to %v", from, to)
			break
		}
		bars := int(to.Sub(tf.BarStart(from))/tf.Duration()) + 1
		if bars > contract.MaxBackfillBars {
			add("from", "range is %d bars of %s, the limit is %d", bars, tf, contract.MaxBackfillBars)
			continue
		}
		pages := (bars + pageBars - 1) / pageBars
		plan.ranges = append(plan.ranges, tfRange{tf: tf, from: from, to: to, pages: pages})
		plan.pages += pages
	}
	if len(problems) > 0 {
		return plan, problems
	}
	return plan, nil
}

// clockShift is how far the source's clock is from the wall clock, zero
// when they agree within a minute (Coinbase).
func clockShift(source, wall time.Time) time.Duration {
	d := source.Sub(wall)
	if d.Abs() < time.Minute {
		return 0
	}
	return d
}

// runBackfill fetches, writes and reports every page of the plan; when
// j is asked to stop it stops after the page it wrote (stop cancels ctx).
func (f *feed) runBackfill(ctx context.Context, stop context.CancelFunc, req contract.SvcRequest, plan backfillPlan, j *job) (any, error) {
	candles := map[contract.Timeframe]int{}
	done := 0
	for _, r := range plan.ranges {
		candles[r.tf] = 0
		err := f.pages(ctx, plan.sub, r.tf, r.from, r.to, "backfill", func(cs []contract.Candle, _ []bool) {
			candles[r.tf] += len(cs)
			done++
			if j.page(r.tf, len(cs)) {
				defer stop()
			}
			msg := fmt.Sprintf("%s %s %s", plan.sub.Symbol, r.tf, time.Now().UTC().Format(time.RFC3339))
			if len(cs) > 0 {
				msg = fmt.Sprintf("%s %s %s", plan.sub.Symbol, r.tf, cs[0].StartTime().Format(time.RFC3339))
			}
			f.publishProgress(ctx, plan.progress, contract.Progress{ID: req.CommandID, Done: min(done, plan.pages), Total: plan.pages, Unit: "pages", Message: msg})
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil, &contract.Error{Code: contract.CodeTimeout, Message: fmt.Sprintf("backfill of %s cancelled after %d of %d pages: %v", plan.sub.Symbol, done, plan.pages, context.Cause(ctx))}
			}
			return nil, &contract.Error{Code: contract.CodeUnavailable, Message: fmt.Sprintf("backfill of %s %s: %v", plan.sub.Symbol, r.tf, err)}
		}
	}
	return contract.FeedBackfillResult{OwnerReply: ownerReply, Symbol: plan.sub.Symbol, Candles: candles, Pages: done}, nil
}

// publishProgress publishes one progress event on JetStream; a failure is
// logged, the job goes on.
func (f *feed) publishProgress(ctx context.Context, subject string, p contract.Progress) {
	data, err := json.Marshal(p)
	if err == nil {
		_, err = f.js.Publish(ctx, subject, data)
	}
	if err != nil && ctx.Err() == nil {
		f.log.Warn("progress publish failed", "subject", subject, "err", err)
	}
}

// status describes this instance: users, products, freshness, counters.
func (f *feed) status(started time.Time) any {
	f.mu.Lock()
	products := f.eng.Products()
	users := map[string]contract.FeedUserStatus{}
	for token, u := range f.users {
		fresh := map[string]contract.FeedFreshness{}
		for sym := range u.attached {
			if p, ok := products[sym]; ok {
				fresh[sym] = contract.FeedFreshness{LagMs: p.LagMs, LastTrade: p.LastTrade, LastCandle: p.LastCandle, LastBook: p.LastBook, Syncing: p.Syncing}
			}
		}
		us := contract.FeedUserStatus{
			OwnerReply: contract.OwnerReply{Owner: f.owns(token)}, Active: len(u.attached) > 0, Paused: u.state.Paused, Mode: u.state.Mode,
			Symbols: u.state.Symbols, Subscribed: sortedKeys(u.attached), Book: u.state.Mode.UsesOrderBook() && len(u.attached) > 0,
			Revision: u.state.Revision, Jobs: len(u.jobs), Freshness: fresh,
		}
		if u.fill != nil {
			select {
			case <-u.fill.done:
				us.GapFilled = u.fill.result
			default:
				us.GapFilling = true
			}
		}
		users[token] = us
	}
	var members []string
	if f.group != nil {
		members = f.group.Members()
	}
	f.mu.Unlock()
	stats := f.eng.Stats()
	return contract.FeedStatus{
		Source: f.eng.Source().Name(), StartedAt: started, Members: members, Users: users, Products: products,
		Engine: stats, LastGapFillMs: stats.LastGapFill.Milliseconds(), MaxGapFillMs: stats.MaxGapFill.Milliseconds(),
		SourceStatus: f.eng.Source().Status(),
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
