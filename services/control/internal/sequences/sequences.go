// Package sequences runs vigil's six operator commands as the ordered,
// confirmed sequences of docs/design.md: each command reads the user's
// desired state, writes the new one to VIGIL_STATE first, then sends its
// steps to the services one after the other, going on only when every
// instance confirmed. A step that is not confirmed ends the command failed,
// naming the instances; the desired state stays written so they converge
// when they come back, except for reload-settings and switch-mode, which
// are all or nothing: they restore the previous desired state and undo
// their confirmed steps in compensation steps (rollback.go).
package sequences

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/control/internal/desired"
	"vigil.dev/services/control/internal/directory"
	"vigil.dev/services/control/internal/fanout"
)

// Errors of the sequences, wrapped with details.
var (
	// ErrNoExchange reports a user without an exchange account (conflict:
	// the command needs state the user lacks).
	ErrNoExchange = contract.NewKind(contract.ErrConflict, "user has no exchange account")
	// ErrNotYourExchange reports an exchange account of another user
	// (forbidden).
	ErrNotYourExchange = contract.ErrNotYourExchange
)

// CancelledError is the cause of a background job's context when a pause
// or a cancel stops it.
type CancelledError struct {
	// By is the id of the pause or cancel.
	By string
	// Command is pause or cancel.
	Command contract.Command
}

// Error implements error.
func (e *CancelledError) Error() string { return "cancelled by " + string(e.Command) + " " + e.By }

// Unwrap makes a cancelled command a conflict (another command ended it).
func (e *CancelledError) Unwrap() error { return contract.ErrConflict }

// Steps sends one step to every instance of a service.
type Steps interface {
	Call(ctx context.Context, svc contract.Svc, verb contract.Verb, req contract.SvcRequest, timeout time.Duration) (fanout.Answers, error)
}

// States reads and writes desired state.
type States interface {
	Get(ctx context.Context, user string) (desired.Entry, error)
	Put(ctx context.Context, st contract.DesiredState, kvRev uint64) (uint64, error)
}

// Users resolves user tokens.
type Users interface {
	Lookup(ctx context.Context, token string) (directory.User, error)
	Refresh(ctx context.Context, token string) (directory.User, error)
}

// Cache deletes cached series (redisstore.Store).
type Cache interface {
	Clear(ctx context.Context, sel contract.CacheSelector) (int, error)
	// CountCleared counts by prefix the keys Clear would delete.
	CountCleared(ctx context.Context, sel contract.CacheSelector) (map[string]int, error)
}

// Progress publishes progress events of a command.
type Progress interface {
	PublishProgress(ctx context.Context, user string, p contract.Progress) error
}

// Deps are what the sequences talk to.
type Deps struct {
	Steps    Steps
	States   States
	Users    Users
	Cache    Cache
	Progress Progress
	Log      *slog.Logger
}

// Config tunes the sequences.
type Config struct {
	Limits contract.Limits
	// StepTimeout bounds each step.
	StepTimeout time.Duration
	// BackfillTimeout bounds each timeframe's feed.backfill step.
	BackfillTimeout time.Duration
	// BackfillBars is force-backfill's default range in bars of each
	// timeframe.
	BackfillBars int
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Command is one command to run.
type Command struct {
	ID      string
	User    string
	Name    contract.Command
	Payload contract.Payload
}

// Outcome is how a command ended.
type Outcome struct {
	Status contract.Status
	// Result is the command's result object, marshalled to JSON.
	Result any
	Error  *contract.Error
	Steps  []contract.Step
}

// Runner runs commands.
type Runner struct {
	d   Deps
	cfg Config
}

// New returns a runner.
func New(d Deps, cfg Config) *Runner {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Runner{d: d, cfg: cfg}
}

// Run runs cmd to its end and returns its outcome.
func (r *Runner) Run(ctx context.Context, cmd Command) Outcome {
	switch p := cmd.Payload.(type) {
	case contract.PausePayload:
		return r.pause(ctx, cmd)
	case contract.ResumePayload:
		return r.resume(ctx, cmd, p)
	case contract.ReloadSettingsPayload:
		return r.reloadSettings(ctx, cmd)
	case contract.SwitchModePayload:
		return r.switchMode(ctx, cmd, p)
	case contract.ForceBackfillPayload:
		return r.forceBackfill(ctx, cmd, p)
	case contract.ClearCachePayload:
		return r.clearCache(ctx, cmd, p)
	}
	return failed(nil, &contract.Error{Code: contract.CodeUnknownCommand, Message: fmt.Sprintf("command %q has no sequence", cmd.Name)})
}

// stepSpec is one step of a sequence.
type stepSpec struct {
	svc  contract.Svc
	verb contract.Verb
}

// The sequences of docs/design.md.
var (
	pauseSteps  = []stepSpec{{contract.SvcAlerts, contract.VerbPause}, {contract.SvcFeed, contract.VerbPause}, {contract.SvcIndicators, contract.VerbPause}}
	resumeSteps = []stepSpec{{contract.SvcIndicators, contract.VerbResume}, {contract.SvcFeed, contract.VerbResume}, {contract.SvcAlerts, contract.VerbResume}}
	applySteps  = []stepSpec{{contract.SvcFeed, contract.VerbApply}, {contract.SvcIndicators, contract.VerbApply}, {contract.SvcAlerts, contract.VerbApply}}
)

// switchModeSteps quiesces alerts, switches feed, indicators and alerts,
// and starts alerts again unless the user is paused.
func switchModeSteps(paused bool) []stepSpec {
	s := append([]stepSpec{{contract.SvcAlerts, contract.VerbPause}}, applySteps...)
	if !paused {
		s = append(s, stepSpec{contract.SvcAlerts, contract.VerbResume})
	}
	return s
}

// run sends the steps in order with st as the request's state; it stops at
// the first step not confirmed. replies holds each confirmed step's ok
// replies.
func (r *Runner) run(ctx context.Context, cmd Command, st *contract.DesiredState, specs []stepSpec, args any, timeout time.Duration) (steps []contract.Step, replies [][]contract.SvcReply, err error) {
	req := contract.SvcRequest{CommandID: cmd.ID, User: cmd.User, State: st}
	if args != nil {
		if req.Args, err = json.Marshal(args); err != nil {
			return nil, nil, fmt.Errorf("encode step args: %w", err)
		}
	}
	for _, s := range specs {
		a, err := r.d.Steps.Call(ctx, s.svc, s.verb, req, timeout)
		steps = append(steps, a.Step)
		if err != nil {
			if ctx.Err() != nil {
				return steps, replies, context.Cause(ctx)
			}
			if a.Step.Error == nil {
				return steps, replies, err
			}
			e := *a.Step.Error
			e.Message = fmt.Sprintf("%s %s: %s", s.svc.MicroName(), s.verb, e.Message)
			return steps, replies, &e
		}
		replies = append(replies, a.Replies)
	}
	return steps, replies, nil
}

// current is the user's desired state. A user without one is seeded first
// with the initial state, so commands only ever update an existing entry
// (compare-and-set) and never race a concurrent seed.
func (r *Runner) current(ctx context.Context, user string) (desired.Entry, error) {
	e, err := r.d.States.Get(ctx, user)
	if err != nil || e.Exists() {
		return e, err
	}
	if _, err := r.Seed(ctx, user); err != nil {
		return desired.Entry{}, err
	}
	if e, err = r.d.States.Get(ctx, user); err == nil && !e.Exists() {
		err = fmt.Errorf("%w: the state of %s vanished after seeding", desired.ErrChanged, user)
	}
	return e, err
}

// InitialState is the desired state of a user that has none yet: running,
// with the mode, symbols and settings of users.settings, revision 1.
func (r *Runner) InitialState(u directory.User) (contract.DesiredState, error) {
	settings, err := contract.ParseSettings(u.Settings, r.cfg.Limits)
	if err != nil {
		return contract.DesiredState{}, fmt.Errorf("users.settings of %s: %w", u.Token, err)
	}
	if u.DefaultExchange() == 0 {
		return contract.DesiredState{}, fmt.Errorf("%w: %s", ErrNoExchange, u.Token)
	}
	return contract.DesiredState{
		User: u.Token, UserID: u.ID, ExchangeID: u.DefaultExchange(),
		Mode: settings.Mode, Symbols: settings.Symbols, Revision: 1, Settings: settings,
		UpdatedAt: r.cfg.Now().UTC(),
	}, nil
}

// Seed writes the initial desired state of token unless it has one, and
// reports whether it wrote it.
func (r *Runner) Seed(ctx context.Context, token string) (bool, error) {
	e, err := r.d.States.Get(ctx, token)
	if err != nil || e.Exists() {
		return false, err
	}
	u, err := r.d.Users.Lookup(ctx, token)
	if err != nil {
		return false, err
	}
	st, err := r.InitialState(u)
	if err != nil {
		return false, err
	}
	if _, err := r.d.States.Put(ctx, st, 0); err != nil {
		if errors.Is(err, desired.ErrChanged) {
			return false, nil // another instance seeded it
		}
		return false, err
	}
	return true, nil
}

// write stores next as cmd's desired state over the entry read at kvRev.
func (r *Runner) write(ctx context.Context, cmd Command, next contract.DesiredState, kvRev uint64) error {
	next.CommandID = cmd.ID
	next.UpdatedAt = r.cfg.Now().UTC()
	_, err := r.d.States.Put(ctx, next, kvRev)
	return err
}

func (r *Runner) pause(ctx context.Context, cmd Command) Outcome {
	cur, err := r.current(ctx, cmd.User)
	if err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	if cur.State.Paused {
		return succeeded(contract.PauseResult{Status: contract.ResultAlreadyPaused}, nil)
	}
	next := cur.State
	next.Paused = true
	return r.sequence(ctx, cmd, next, cur.KVRev, pauseSteps, func([][]contract.SvcReply) any {
		return contract.PauseResult{Status: contract.ResultPaused}
	})
}

func (r *Runner) resume(ctx context.Context, cmd Command, p contract.ResumePayload) Outcome {
	cur, err := r.current(ctx, cmd.User)
	if err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	next := cur.State
	newSymbols := p.Symbols != nil && !sameSet(p.Symbols, cur.State.Symbols)
	if !cur.State.Paused && !newSymbols {
		return succeeded(contract.ResumeResult{Status: contract.ResultAlreadyRunning, Symbols: cur.State.Symbols}, nil)
	}
	next.Paused = false
	if newSymbols {
		next.Symbols = slices.Clone(p.Symbols)
		next.Settings.Symbols = next.Symbols
		next.Revision++
	}
	return r.sequence(ctx, cmd, next, cur.KVRev, resumeSteps, func(replies [][]contract.SvcReply) any {
		gap := contract.GapFill{}
		for _, rep := range replies[1] { // feed.resume
			var res contract.FeedResumeResult
			if json.Unmarshal(rep.Result, &res) == nil {
				mergeCounts(gap, res.GapFilled)
			}
		}
		return contract.ResumeResult{Status: contract.ResultResumed, Symbols: next.Symbols, GapFilled: &gap}
	})
}

func (r *Runner) reloadSettings(ctx context.Context, cmd Command) Outcome {
	u, err := r.d.Users.Refresh(ctx, cmd.User)
	if err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	settings, err := contract.ParseSettings(u.Settings, r.cfg.Limits)
	if err != nil {
		return failed(nil, contract.ErrorOf(fmt.Errorf("users.settings of %s: %w", u.Token, err)))
	}
	cur, err := r.stateFor(ctx, cmd)
	if err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	next := cur.State
	if !u.HasExchange(next.ExchangeID) {
		if u.DefaultExchange() == 0 {
			return failed(nil, contract.ErrorOf(fmt.Errorf("%w: %s", ErrNoExchange, u.Token)))
		}
		next.ExchangeID = u.DefaultExchange()
	}
	next.UserID = u.ID
	next.Settings, next.Mode, next.Symbols = settings, settings.Mode, settings.Symbols
	next.Revision++
	changes := diff(cur.State, next)
	in := planInputs(cmd, cur.State)
	in.Next, in.Settings, in.Exchange = stateDigest(next), digest(u.Settings), next.ExchangeID
	if isDryRun(cmd) {
		return r.planApply(ctx, cmd, in, next, func(d contract.DryRunResult) any {
			return contract.ReloadSettingsPlan{ReloadSettingsResult: contract.ReloadSettingsResult{Revision: next.Revision, Changes: changes}, DryRunResult: d}
		})
	}
	if err := checkPlan(ctx, cmd, in); err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	return r.allOrNothing(ctx, cmd, cur, next, applySteps, func([][]contract.SvcReply) any {
		return contract.ReloadSettingsResult{Reloaded: true, Revision: next.Revision, Changes: changes}
	})
}

func (r *Runner) switchMode(ctx context.Context, cmd Command, p contract.SwitchModePayload) Outcome {
	cur, err := r.stateFor(ctx, cmd)
	if err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	in := planInputs(cmd, cur.State)
	from := cur.State.Mode
	if from == p.Mode {
		result := contract.SwitchModeResult{Status: contract.ResultAlreadyInMode, Mode: from}
		if isDryRun(cmd) {
			return succeeded(contract.SwitchModePlan{SwitchModeResult: result, DryRunResult: dryRun(ctx, in, nil)}, nil)
		}
		if err := checkPlan(ctx, cmd, in); err != nil {
			return failed(nil, contract.ErrorOf(err))
		}
		return succeeded(result, nil)
	}
	next := cur.State
	next.Mode, next.Settings.Mode = p.Mode, p.Mode
	next.Revision++
	in.Next = stateDigest(next)
	if isDryRun(cmd) {
		return r.planApply(ctx, cmd, in, next, func(d contract.DryRunResult) any {
			return contract.SwitchModePlan{SwitchModeResult: contract.SwitchModeResult{From: from, To: p.Mode, Revision: next.Revision}, DryRunResult: d}
		})
	}
	if err := checkPlan(ctx, cmd, in); err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	return r.allOrNothing(ctx, cmd, cur, next, switchModeSteps(next.Paused), func([][]contract.SvcReply) any {
		return contract.SwitchModeResult{Switched: true, From: from, To: p.Mode}
	})
}

// sequence writes next, runs the steps and builds the result from their
// replies.
func (r *Runner) sequence(ctx context.Context, cmd Command, next contract.DesiredState, kvRev uint64, specs []stepSpec, result func([][]contract.SvcReply) any) Outcome {
	if err := r.write(ctx, cmd, next, kvRev); err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	next.CommandID = cmd.ID
	steps, replies, err := r.run(ctx, cmd, &next, specs, nil, r.cfg.StepTimeout)
	if err != nil {
		e := contract.ErrorOf(err)
		e.Message += fmt.Sprintf(" (desired state revision %d was written; instances converge to it)", next.Revision)
		return failed(steps, e)
	}
	return succeeded(result(replies), steps)
}

func (r *Runner) clearCache(ctx context.Context, cmd Command, p contract.ClearCachePayload) Outcome {
	u, err := r.d.Users.Lookup(ctx, cmd.User)
	if err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	exchange := p.Exchange
	switch {
	case exchange == 0 && u.DefaultExchange() == 0:
		return failed(nil, contract.ErrorOf(fmt.Errorf("%w: %s", ErrNoExchange, u.Token)))
	case exchange == 0:
		exchange = u.DefaultExchange()
	case !u.HasExchange(exchange):
		return failed(nil, contract.ErrorOf(contract.NotYourExchange(exchange, u.Token)))
	}
	args := contract.ForgetArgs{UserID: u.ID, ExchangeID: exchange, Scope: p.Scope, Symbol: p.Symbol, Timeframe: p.Timeframe}
	if err := args.Selector().Validate(); err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	if pl := planningOf(cmd.Payload); pl.DryRun || pl.Plan != "" {
		if out, stop := r.planClearCache(ctx, cmd, args); stop {
			return out
		}
	}
	cur, err := r.d.States.Get(ctx, cmd.User)
	if err != nil {
		return failed(nil, contract.ErrorOf(err))
	}
	var st *contract.DesiredState
	if cur.Exists() {
		st = &cur.State
	}
	steps, _, err := r.run(ctx, cmd, st, []stepSpec{{contract.SvcIndicators, contract.VerbForget}}, args, r.cfg.StepTimeout)
	if err != nil {
		return failed(steps, contract.ErrorOf(err))
	}
	n, err := r.d.Cache.Clear(ctx, args.Selector())
	result := contract.ClearCacheResult{ClearedKeys: clearedKeys(args, err == nil), DeletedCount: n}
	if err != nil {
		out := failed(steps, &contract.Error{Code: contract.CodeUnavailable, Message: fmt.Sprintf("redis: deleted %d keys, then: %v", n, err)})
		out.Result = result
		return out
	}
	return succeeded(result, steps)
}

// clearedKeys says which keys clear-cache args select.
func clearedKeys(args contract.ForgetArgs, cleared bool) contract.ClearedKeys {
	return contract.ClearedKeys{Cleared: cleared, Scope: args.Scope, Symbol: args.Symbol, Timeframe: args.Timeframe, Exchange: args.ExchangeID}
}

func succeeded(result any, steps []contract.Step) Outcome {
	return Outcome{Status: contract.StatusSucceeded, Result: result, Steps: steps}
}

func failed(steps []contract.Step, e *contract.Error) Outcome {
	return Outcome{Status: contract.StatusFailed, Error: e, Steps: steps}
}

// sameSet reports whether a and b hold the same symbols.
func sameSet(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(slices.Compact(x), slices.Compact(y))
}

// mergeCounts adds src's counts into dst.
func mergeCounts(dst, src contract.GapFill) {
	for sym, byTF := range src {
		if dst[sym] == nil {
			dst[sym] = map[contract.Timeframe]int{}
		}
		for tf, n := range byTF {
			dst[sym][tf] += n
		}
	}
}
