package figures

import (
	"context"
	"fmt"
	"time"

	"vigil.dev/bench/internal/report"
	"vigil.dev/bench/internal/stack"
	"vigil.dev/pkg/contract"
)

// perUserNumber is the figure's row number: issue 13 item 6, after the
// scale-out figure.
const perUserNumber = 9

// perUserSymbols are the products every user of the figure watches.
var perUserSymbols = []string{"BTC-USD", "ETH-USD", "SOL-USD"}

// perUserActive are the active user counts the figure compares: the
// marginal cost of a user is the difference over the added users.
var perUserActive = []int{1, 5}

// perUserQuiet are the feed's quiet intervals compared: the flush interval
// itself (every in-progress change written, as before issue 13 item 6)
// and the default.
var perUserQuiet = []time.Duration{100 * time.Millisecond, 5 * time.Second}

// perUserSettings is a close-only user like the demo's position monitor:
// the three products, an RSI rule on 1h for each, evaluated on close.
func perUserSettings(int) contract.Settings {
	seventy := 70.0
	var rules []contract.Rule
	for _, sym := range perUserSymbols {
		rules = append(rules, contract.Rule{ID: "rsi-high-" + sym, Symbol: sym, Timeframe: contract.TF1h, Kind: contract.RuleThreshold,
			SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}, Op: contract.OpAbove, Value: &seventy})
	}
	return contract.Settings{Mode: contract.ModePositionMonitor, Symbols: perUserSymbols,
		Rules: map[contract.Mode][]contract.Rule{contract.ModePositionMonitor: rules}}
}

// perUserRates are the rates of one window.
type perUserRates struct {
	Active           int     `json:"active_users"`
	Seconds          float64 `json:"seconds"`
	CandleUpdates    float64 `json:"candle_updates_per_s"`
	IndicatorUpdates float64 `json:"indicator_updates_per_s"`
	Evaluations      float64 `json:"evaluations_per_s"`
	// CPU is the CPU seconds per wall second of feed, indicators and
	// alerts together.
	CPU float64 `json:"cpu_per_s"`
}

// perUserRun is one quiet interval's windows.
type perUserRun struct {
	Quiet   string         `json:"quiet_interval"`
	Windows []perUserRates `json:"windows"`
}

// marginal is the cost of one more user-product: the difference of the
// last and first windows over the user-products added.
func (r perUserRun) marginal() perUserRates {
	a, b := r.Windows[0], r.Windows[len(r.Windows)-1]
	n := float64((b.Active - a.Active) * len(perUserSymbols))
	return perUserRates{CandleUpdates: (b.CandleUpdates - a.CandleUpdates) / n, IndicatorUpdates: (b.IndicatorUpdates - a.IndicatorUpdates) / n,
		Evaluations: (b.Evaluations - a.Evaluations) / n, CPU: (b.CPU - a.CPU) / n}
}

// PerUser measures issue 13 item 6's figure: the marginal cost of one
// more close-only user on products already watched (candle updates,
// indicator updates and evaluations per second per user-product, and
// the CPU of feed + indicators + alerts), on the simulator at its default
// speed (sim time 60× the wall clock: a busy market whose bars change at
// every tick, and whose 1m bars close every second), with the
// feed's quiet interval at the flush interval (the baseline: every
// in-progress change written) and at its default.
func PerUser(ctx context.Context, env *Env, out *Output) error {
	details := map[string]perUserRun{}
	var runs []perUserRun
	for _, quiet := range perUserQuiet {
		run, err := perUserAt(ctx, env, quiet)
		if err != nil {
			return err
		}
		details[run.Quiet] = run
		runs = append(runs, run)
	}
	base, now := runs[0].marginal(), runs[len(runs)-1].marginal()
	for _, m := range []struct {
		name, unit   string
		value, basev float64
	}{
		{"candle updates per s per added user-product", "updates/s", now.CandleUpdates, base.CandleUpdates},
		{"indicator updates per s per added user-product", "updates/s", now.IndicatorUpdates, base.IndicatorUpdates},
		{"evaluations per s per added user-product", "evals/s", now.Evaluations, base.Evaluations},
		{"CPU per added user-product (feed+indicators+alerts)", "ms/s", 1000 * now.CPU, 1000 * base.CPU},
	} {
		row := report.Row{Number: perUserNumber, Figure: "peruser", Name: m.name, Unit: m.unit, Value: report.Single(m.value),
			Target: "reported (cut what is not inherent)",
			Note: fmt.Sprintf("close-only users on %d products, %d → %d active users, quiet interval %s; baseline: the same with %s (every in-progress change)",
				len(perUserSymbols), perUserActive[0], perUserActive[len(perUserActive)-1], runs[len(runs)-1].Quiet, runs[0].Quiet)}
		row.Compare(fmt.Sprintf("quiet interval %s", runs[0].Quiet), report.Single(m.basev), false)
		out.add("", nil, row)
	}
	out.add("peruser", details)
	return nil
}

// perUserAt runs the windows on a fresh stack whose feed has the quiet
// interval quiet: every user seeded, all but the first paused, then
// resumed for the last window.
func perUserAt(ctx context.Context, env *Env, quiet time.Duration) (perUserRun, error) {
	run := perUserRun{Quiet: quiet.String()}
	s, err := env.newStack(ctx, "peruser")
	if err != nil {
		return run, err
	}
	defer s.Close()
	users := perUserActive[len(perUserActive)-1]
	tokens := make([]string, users)
	for i := range tokens {
		tokens[i] = fmt.Sprintf("peruser-%d", i)
	}
	if _, err := s.seed(ctx, tokens, perUserSettings); err != nil {
		return run, err
	}
	// A resume waits for the user's gap fill, slow on a loaded machine
	// with the simulator's fast clock: a long step timeout.
	procs, err := s.start(ctx, stackServices, 1, 1, "VIGIL_FEED_QUIET_INTERVAL="+quiet.String(), "VIGIL_CONTROL_STEP_TIMEOUT=1m")
	if err != nil {
		return run, err
	}
	if err := s.waitStates(ctx, tokens); err != nil {
		return run, err
	}
	cmd, err := newCommander(s.nc)
	if err != nil {
		return run, err
	}
	defer cmd.close()
	send := func(users []string, command contract.Command) error {
		for _, u := range users {
			res, _, err := cmd.run(ctx, u, command, nil, time.Minute)
			if err != nil {
				return err
			}
			if res.Status != contract.StatusSucceeded {
				return fmt.Errorf("%w: %s of %s: %s", ErrFigure, command, u, errText(res.Error))
			}
		}
		return nil
	}
	if err := send(tokens[perUserActive[0]:], contract.CmdPause); err != nil {
		return run, err
	}
	for i, active := range perUserActive {
		if i > 0 {
			if err := send(tokens[perUserActive[i-1]:active], contract.CmdResume); err != nil {
				return run, err
			}
		}
		env.Log.Info("peruser: measuring", "quiet", quiet, "active users", active)
		w, err := perUserWindow(ctx, s, procs, active)
		if err != nil {
			return run, err
		}
		run.Windows = append(run.Windows, w)
	}
	return run, nil
}

// perUserWindowLength is how long one window measures, after a settling
// pause in which the last commands' gap fills end.
const (
	perUserSettle       = 5 * time.Second
	perUserWindowLength = 20 * time.Second
)

// perUserWindow measures the rates over one window with active users.
func perUserWindow(ctx context.Context, s *benchStack, procs []*stack.Proc, active int) (perUserRates, error) {
	select {
	case <-ctx.Done():
		return perUserRates{}, ctx.Err()
	case <-time.After(perUserSettle):
	}
	type sample struct {
		candles, indicators uint64
		evals               int64
		cpu                 float64
		at                  time.Time
	}
	take := func() (sample, error) {
		var x sample
		for stream, seq := range map[string]*uint64{contract.StreamCandles: &x.candles, contract.StreamIndicators: &x.indicators} {
			st, err := s.js.Stream(ctx, stream)
			if err != nil {
				return x, err
			}
			*seq = st.CachedInfo().State.LastSeq
		}
		var err error
		if x.evals, err = alertsEvaluations(s, 1); err != nil {
			return x, err
		}
		for _, p := range procs {
			if p.Service == stack.Control {
				continue
			}
			cpu, err := p.CPUTime()
			if err != nil {
				return x, err
			}
			x.cpu += cpu.Seconds()
		}
		x.at = time.Now()
		return x, nil
	}
	a, err := take()
	if err != nil {
		return perUserRates{}, err
	}
	select {
	case <-ctx.Done():
		return perUserRates{}, ctx.Err()
	case <-time.After(perUserWindowLength):
	}
	b, err := take()
	if err != nil {
		return perUserRates{}, err
	}
	secs := b.at.Sub(a.at).Seconds()
	return perUserRates{Active: active, Seconds: secs, CandleUpdates: float64(b.candles-a.candles) / secs,
		IndicatorUpdates: float64(b.indicators-a.indicators) / secs, Evaluations: float64(b.evals-a.evals) / secs,
		CPU: (b.cpu - a.cpu) / secs}, nil
}
