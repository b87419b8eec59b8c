package daemon

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/candlewriter"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/service"
	"vigil.dev/services/feed/internal/candles"
)

// reconvergeEvery re-checks every user's ownership and state even when no
// change was seen (a missed watch update, a lost membership notification).
const reconvergeEvery = 5 * time.Second

// feed holds the users this instance knows and runs their jobs.
type feed struct {
	cfg     Config
	log     *slog.Logger
	js      jetstream.JetStream
	writer  *candlewriter.Writer
	eng     *candles.Engine
	metrics *candles.Metrics
	group   *membership.Group

	mu    sync.Mutex
	users map[string]*user
	jobID int
	// stopped are the backfills a pause or a lost user stopped, by user
	// and command id (ids are per user), kept stoppedJobsKept so that the
	// command's feed.cancel, which control sends beside the pause, still
	// reports how far each got (control recomputes the timeframe it
	// stopped in).
	stopped map[commandKey][]stoppedJob
}

// commandKey names one user's command.
type commandKey struct{ user, command string }

// stoppedJob is a backfill stopped by something other than its cancel.
type stoppedJob struct {
	job *job
	at  time.Time
}

// stoppedJobsKept is how long a stopped backfill's progress is kept for its
// command's feed.cancel.
const stoppedJobsKept = 5 * time.Minute

// user is one user's desired state and what this instance does for them.
type user struct {
	state contract.DesiredState
	known bool // a desired state arrived (KV or verb)
	// attached are the subscribers this instance has in the engine, by symbol.
	attached map[string]candles.Subscriber
	// diff is the symbol change of the latest state revision (apply's result).
	diff symbolDiff
	// fill is the gap fill started when the user last became active.
	fill *fillJob
	// jobs are the user's running gap fills and backfills.
	jobs map[int]*job
}

type symbolDiff struct {
	revision       int64
	added, removed []string
}

// fillJob is a running or finished gap fill of some of a user's symbols.
type fillJob struct {
	done   chan struct{}
	result contract.GapFill
	errs   []string
}

func newFeed(cfg Config, log *slog.Logger, js jetstream.JetStream, writer *candlewriter.Writer, eng *candles.Engine, metrics *candles.Metrics) *feed {
	return &feed{cfg: cfg, log: log, js: js, writer: writer, eng: eng, metrics: metrics, users: map[string]*user{},
		stopped: map[commandKey][]stoppedJob{}}
}

// userLocked returns the user of token, creating an unknown one.
func (f *feed) userLocked(token string) *user {
	u := f.users[token]
	if u == nil {
		u = &user{attached: map[string]candles.Subscriber{}, jobs: map[int]*job{}}
		f.users[token] = u
	}
	return u
}

// setStateLocked records a new desired state and the symbol diff it makes.
func (f *feed) setStateLocked(u *user, s contract.DesiredState) {
	old := u.state.Symbols
	if !u.known {
		old = nil
	}
	added, removed := diffSymbols(old, s.Symbols)
	if len(added) > 0 || len(removed) > 0 {
		u.diff = symbolDiff{revision: s.Revision, added: added, removed: removed}
	}
	s.Symbols = uniqueSymbols(s.Symbols)
	u.state, u.known = s, true
}

func uniqueSymbols(in []string) []string {
	out := make([]string, 0, len(in))
	for _, s := range in {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// diffSymbols lists the symbols of next not in prev and of prev not in next.
func diffSymbols(prev, next []string) (added, removed []string) {
	added, removed = []string{}, []string{}
	for _, s := range next {
		if !slices.Contains(prev, s) && !slices.Contains(added, s) {
			added = append(added, s)
		}
	}
	for _, s := range prev {
		if !slices.Contains(next, s) && !slices.Contains(removed, s) {
			removed = append(removed, s)
		}
	}
	return added, removed
}

// owns reports whether this instance owns token.
func (f *feed) owns(token string) bool { return f.group != nil && f.group.Owns(token) }

// convergePlan is what converging a user changes in the engine.
type convergePlan struct {
	// stop: the user does not run here (unknown, paused or not owned):
	// every symbol is detached and their jobs cancelled.
	stop bool
	// detach are attached symbols no longer wanted (or of another
	// account), sorted; rebook the attached ones whose subscriber changes
	// (the book channel); attach the symbols to attach.
	detach []string
	rebook []candles.Subscriber
	attach []candles.Subscriber
}

// planConvergeLocked is what convergeLocked does for u, computed without
// changing anything (it is also the feed's part of a dry run).
func (f *feed) planConvergeLocked(token string, u *user) convergePlan {
	if !u.known || u.state.Paused || !f.owns(token) {
		return convergePlan{stop: true}
	}
	var p convergePlan
	for sym, sub := range u.attached {
		if !slices.Contains(u.state.Symbols, sym) || sub.UserID != u.state.UserID || sub.ExchangeID != u.state.ExchangeID {
			p.detach = append(p.detach, sym)
		}
	}
	slices.Sort(p.detach)
	book := u.state.Mode.UsesOrderBook()
	for _, sym := range u.state.Symbols {
		sub := candles.Subscriber{User: token, UserID: u.state.UserID, ExchangeID: u.state.ExchangeID, Symbol: sym, Book: book,
			Live: liveTimeframes(u.state, sym)}
		if old, had := u.attached[sym]; had && !slices.Contains(p.detach, sym) {
			if old != sub {
				p.rebook = append(p.rebook, sub)
			}
			continue
		}
		p.attach = append(p.attach, sub)
	}
	return p
}

// liveTimeframes are the timeframes of the live rules on sym in the
// state's active mode: their in-progress bars are written at once, the others'
// coalesced.
func liveTimeframes(s contract.DesiredState, sym string) candles.Timeframes {
	var tfs []contract.Timeframe
	for _, r := range s.ActiveRules() {
		if r.Symbol == sym && r.EvaluateOrDefault() == contract.OnLive {
			tfs = append(tfs, r.Timeframe)
		}
	}
	return candles.TimeframesOf(tfs...)
}

// convergeLocked brings the engine in line with token's desired state and
// ownership: attach or detach symbols, switch the book, start a gap fill
// when the user becomes active or gains symbols, cancel jobs when the user
// stops here.
func (f *feed) convergeLocked(token string) {
	u := f.users[token]
	if u == nil {
		return
	}
	plan := f.planConvergeLocked(token, u)
	if plan.stop {
		f.stopLocked(token, u)
		if !u.known {
			delete(f.users, token)
		}
		return
	}
	wasActive := len(u.attached) > 0
	for _, sym := range plan.detach {
		sub := u.attached[sym]
		f.eng.Detach(sub.User, sub.ExchangeID, sym)
		delete(u.attached, sym)
	}
	for _, sub := range plan.rebook {
		if _, err := f.eng.Attach(sub); err != nil {
			f.log.Warn("book switch failed", "user", token, "symbol", sub.Symbol, "err", err)
			continue
		}
		u.attached[sub.Symbol] = sub
	}
	fresh := plan.attach
	if len(fresh) == 0 {
		return
	}
	// Where each gap starts, read before live writes reach the series.
	from, err := f.readMarks(fresh)
	if err != nil {
		f.log.Warn("gap fill starts from the fill depth", "user", token, "err", err)
	}
	var added []fillTarget
	for _, sub := range fresh {
		at, err := f.eng.Attach(sub)
		if err != nil {
			f.log.Warn("attach failed", "user", token, "symbol", sub.Symbol, "err", err)
			continue
		}
		u.attached[sub.Symbol] = sub
		added = append(added, fillTarget{sub: sub, attachedAt: at})
	}
	job := f.startFillLocked(token, u, added, from)
	if !wasActive {
		u.fill = job
		f.log.Info("user started", "user", token, "symbols", u.state.Symbols, "mode", u.state.Mode)
	}
}

// stopLocked detaches every symbol of the user and cancels their jobs.
func (f *feed) stopLocked(token string, u *user) {
	if len(u.attached) > 0 {
		f.log.Info("user stopped", "user", token, "paused", u.state.Paused, "owner", f.owns(token))
	}
	for sym, sub := range u.attached {
		f.eng.Detach(sub.User, sub.ExchangeID, sym)
	}
	clear(u.attached)
	now := time.Now()
	for command, jobs := range f.stopped {
		if now.Sub(jobs[len(jobs)-1].at) > stoppedJobsKept {
			delete(f.stopped, command)
		}
	}
	for id, j := range u.jobs {
		j.cancel()
		delete(u.jobs, id)
		if j.command != "" {
			k := commandKey{token, j.command}
			f.stopped[k] = append(f.stopped[k], stoppedJob{job: j, at: now})
		}
	}
}

// takeStoppedLocked returns (and forgets) the backfills of the user's
// command that a pause or a lost user stopped.
func (f *feed) takeStoppedLocked(user, command string) []*job {
	k := commandKey{user, command}
	var out []*job
	for _, s := range f.stopped[k] {
		out = append(out, s.job)
	}
	delete(f.stopped, k)
	return out
}

// cancelJobs cancels every user's gap fills and backfills (shutdown; the
// engine's last flush still writes the bars it holds).
func (f *feed) cancelJobs() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, u := range f.users {
		for id, j := range u.jobs {
			j.cancel()
			delete(u.jobs, id)
		}
	}
}

// job is a running gap fill or backfill: cancel stops it, done closes when
// it has returned (and written nothing more). A backfill also has the id
// of its command, and how far it got.
type job struct {
	cancel context.CancelFunc
	done   chan struct{}

	command string
	mu      sync.Mutex
	stop    bool // a cancel asked the backfill to stop after its page
	got     contract.JobProgress
}

// page counts one written page of n candles of tf and reports whether the
// job is to stop before the next page.
func (j *job) page(tf contract.Timeframe, n int) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.got.Pages++
	j.got.Candles[tf] += n
	return j.stop
}

// progress is how far the job got.
func (j *job) progress() contract.JobProgress {
	j.mu.Lock()
	defer j.mu.Unlock()
	p := j.got
	p.Candles = maps.Clone(j.got.Candles)
	return p
}

// askStop makes the job stop once the page it works on is written.
func (j *job) askStop() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.stop = true
}

// addJobLocked registers a cancellable job of the user; the job calls the
// returned finish when it returns.
func (f *feed) addJobLocked(u *user, parent context.Context) (context.Context, func()) {
	ctx, _, finish := f.addBackfillLocked(u, parent, "", 0)
	return ctx, finish
}

// addBackfillLocked registers a cancellable job of the user for command
// (a backfill of total pages; "" for a gap fill); the job calls the
// returned finish when it returns.
func (f *feed) addBackfillLocked(u *user, parent context.Context, command string, total int) (context.Context, *job, func()) {
	ctx, cancel := context.WithCancel(parent)
	f.jobID++
	id := f.jobID
	j := &job{cancel: cancel, done: make(chan struct{}), command: command,
		got: contract.JobProgress{Total: total, Candles: map[contract.Timeframe]int{}}}
	u.jobs[id] = j
	return ctx, j, func() {
		cancel()
		close(j.done)
		f.mu.Lock()
		delete(u.jobs, id)
		f.mu.Unlock()
	}
}

// runningJobsLocked are the done channels of the user's jobs.
func runningJobsLocked(u *user) []chan struct{} {
	out := make([]chan struct{}, 0, len(u.jobs))
	for _, j := range u.jobs {
		out = append(out, j.done)
	}
	return out
}

// startFillLocked starts filling the gaps of subs from their marks, in the
// background.
func (f *feed) startFillLocked(token string, u *user, subs []fillTarget, from marks) *fillJob {
	job := &fillJob{done: make(chan struct{})}
	ctx, done := f.addJobLocked(u, context.Background())
	go func() {
		defer close(job.done)
		defer done()
		job.result, job.errs = f.fillGaps(ctx, subs, from)
		if len(job.errs) > 0 {
			f.log.Warn("gap fill incomplete", "user", token, "errors", job.errs)
		}
	}()
	return job
}

// reconverge converges every user whenever the membership changes, and
// every reconvergeEvery, until ctx ends.
func (f *feed) reconverge(ctx context.Context) {
	changes := f.group.Changes()
	tick := time.NewTicker(reconvergeEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changes:
			f.convergeAll()
		case <-tick.C:
			f.convergeAll()
		}
	}
}

// onState converges to one user's desired state as the kit's follower
// (service.FollowStates) hands it over; a deleted entry makes the user
// unknown.
func (f *feed) onState(_ context.Context, us service.UserState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if us.Deleted {
		if u := f.users[us.User]; u != nil {
			u.known = false
			f.convergeLocked(us.User)
		}
		return
	}
	u := f.userLocked(us.User)
	if u.known && us.State.UpdatedAt.Before(u.state.UpdatedAt) {
		return // a verb already brought a newer state
	}
	f.setStateLocked(u, us.State)
	f.convergeLocked(us.User)
}

// convergeAll converges every known user (membership changed).
func (f *feed) convergeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for token := range f.users {
		f.convergeLocked(token)
	}
}
