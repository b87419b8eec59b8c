package figures

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"vigil.dev/bench/internal/report"
	"vigil.dev/bench/internal/stack"
	"vigil.dev/bench/internal/stats"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
)

// scaleOutInstances are the instance counts of the scale-out figure.
var scaleOutInstances = []int{1, 2, 3}

// scaleOutNumber is the figure's row number: issue 13's figure, after
// issue 9's seven.
const scaleOutNumber = 8

// ScaleOut measures issue 13's figure: with 1, 2 and 3 instances each of
// vigil-indicators and vigil-alerts on one stack, the messages each
// instance received (its durable consumer's delivered count on
// VIGIL_CANDLES or VIGIL_INDICATORS) and the CPU seconds it used, per
// 1,000 candle updates fed, and the end-to-end rate (candle updates per
// second until alerts evaluated every indicator update). The runner feeds
// like the pipeline figure (pkg/candlewriter). With partitioned streams
// an instance's figures fall to about 1/N of the single instance's; the
// rate does not grow on a 2-core machine, where every instance shares
// the same two cores with the servers and the runner.
func ScaleOut(ctx context.Context, env *Env, out *Output) error {
	details := map[string]any{}
	single := map[string]scaleOutShare{}
	for _, n := range scaleOutInstances {
		run, err := scaleOutAt(ctx, env, n)
		if err != nil {
			return err
		}
		details[fmt.Sprint(n)] = run
		for _, svc := range []string{stack.Indicators, stack.Alerts} {
			share := run.shares(svc)
			if n == 1 {
				single[svc] = share
			}
			out.add("", nil, share.rows(svc, n, single[svc])...)
		}
		rate := report.Row{Number: scaleOutNumber, Figure: "scaleout", Name: fmt.Sprintf("scale-out end to end, %d instance(s) each", n),
			Unit: "updates/s", Value: report.Single(run.Rate), Target: "reported",
			Note: fmt.Sprintf("%d candle updates of %d series, %d indicator updates evaluated in %.1fs; one host's 2 cores are shared by every instance, the servers and the runner, so more instances add no capacity here (differences come from the machine's load)",
				run.Updates, run.Series, run.IndicatorUpdates, run.Seconds)}
		if n > 1 {
			rate.Compare("1 instance each", report.Single(details["1"].(scaleOutRun).Rate), false)
		}
		out.add("", nil, rate)
	}
	out.add("scaleout", details)
	return nil
}

// scaleOutRun is what one instance count measured.
type scaleOutRun struct {
	Instances        int     `json:"instances"`
	Series           int     `json:"series"`
	Updates          int     `json:"candle_updates"`
	IndicatorUpdates int64   `json:"indicator_updates"`
	Seconds          float64 `json:"seconds"`
	Rate             float64 `json:"updates_per_s"`
	// PerInstance are each instance's received messages and CPU seconds
	// over the run, by service and instance name.
	PerInstance map[string]map[string]scaleOutUse `json:"per_instance"`
}

// scaleOutUse is one instance's use over a run.
type scaleOutUse struct {
	Received   uint64  `json:"received"`
	CPUSeconds float64 `json:"cpu_s"`
	// Partitions are how many partitions it owned.
	Partitions int `json:"partitions"`
}

// scaleOutShare is one service's per-instance figures per 1,000 candle
// updates.
type scaleOutShare struct {
	received, cpu []float64 // per instance, per 1,000 candle updates
	shareMax      float64   // the largest instance's share of the total received
}

// shares turns the run's uses of svc into per-1,000-update figures.
func (r scaleOutRun) shares(svc string) scaleOutShare {
	var s scaleOutShare
	per := float64(r.Updates) / 1000
	var total uint64
	for _, u := range r.PerInstance[svc] {
		total += u.Received
	}
	for _, name := range slices.Sorted(mapKeys(r.PerInstance[svc])) {
		u := r.PerInstance[svc][name]
		s.received = append(s.received, float64(u.Received)/per)
		s.cpu = append(s.cpu, u.CPUSeconds/per)
		if total > 0 {
			s.shareMax = max(s.shareMax, float64(u.Received)/float64(total))
		}
	}
	return s
}

// rows are the figure's two rows of svc at n instances: messages and CPU
// seconds per instance per 1,000 candle updates (median over the
// instances, the largest as tail), against the single instance's.
func (s scaleOutShare) rows(svc string, n int, single scaleOutShare) []report.Row {
	what := "candle updates"
	if svc == stack.Alerts {
		what = "indicator updates"
	}
	msgs := report.Row{Number: scaleOutNumber, Figure: "scaleout",
		Name: fmt.Sprintf("%s received per instance per 1,000 candle updates, %d instance(s)", what, n), Unit: "msgs",
		Value: maxTail(s.received), Target: "≤ 1/N + 10 % of the stream",
		Note: fmt.Sprintf("%s: per instance %s; largest share %.1f %%", svc, joinFloats(s.received, "%.0f"), 100*s.shareMax)}
	msgs.SetMet(s.shareMax <= 1/float64(n)+0.10)
	cpu := report.Row{Number: scaleOutNumber, Figure: "scaleout",
		Name: fmt.Sprintf("%s CPU seconds per instance per 1,000 candle updates, %d instance(s)", svc, n), Unit: "s",
		Value: maxTail(s.cpu), Target: "≈ 1/N of 1 instance",
		Note: fmt.Sprintf("per instance %s", joinFloats(s.cpu, "%.3f"))}
	if n > 1 {
		msgs.Compare("1 instance", maxTail(single.received), false)
		cpu.Compare("1 instance", maxTail(single.cpu), false)
	}
	return []report.Row{msgs, cpu}
}

// maxTail is the median of vs with the largest as the tail.
func maxTail(vs []float64) report.Stat {
	if len(vs) == 0 {
		return report.Stat{}
	}
	return report.Stat{N: len(vs), Median: stats.Summarize(vs).Median, Tail: slices.Max(vs), TailName: "max"}
}

func joinFloats(vs []float64, format string) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = fmt.Sprintf(format, v)
	}
	return strings.Join(parts, " / ")
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// scaleOutAt runs the figure with n instances of each service on a fresh
// stack.
func scaleOutAt(ctx context.Context, env *Env, n int) (scaleOutRun, error) {
	run := scaleOutRun{Instances: n, PerInstance: map[string]map[string]scaleOutUse{}}
	// Four symbols a user: enough users for alerts, which partition
	// VIGIL_INDICATORS by user, to split them evenly.
	const symbols = 4
	users := (env.Opts.ScaleOutSeries + symbols*3 - 1) / (symbols * 3)
	run.Series = users * symbols * len(contract.ModePositionMonitor.Timeframes())
	bars := max(PipelineMinBars, env.Opts.ScaleOutBars)
	run.Updates = run.Series * bars
	env.Log.Info("scaleout: starting the stack", "instances", n, "series", run.Series, "bars", bars)
	s, err := env.newStack(ctx, fmt.Sprintf("scaleout%d", n))
	if err != nil {
		return run, err
	}
	defer s.Close()
	tokens := make([]string, users)
	for i := range tokens {
		tokens[i] = fmt.Sprintf("scale-%d", i)
	}
	accounts, err := s.seed(ctx, tokens, pipelineSettings(symbols))
	if err != nil {
		return run, err
	}
	procs, err := s.start(ctx, []string{stack.Indicators, stack.Alerts}, 1, n)
	if err != nil {
		return run, err
	}
	ctl, err := s.launcher.Start(ctx, stack.Control, "vigil-control-1")
	if err != nil {
		return run, err
	}
	if err := s.waitStates(ctx, tokens); err != nil {
		return run, err
	}
	if err := ctl.Stop(); err != nil {
		return run, err
	}
	if err := waitScaleOutReady(ctx, s, n, run.Series, users); err != nil {
		return run, err
	}
	before, err := scaleOutUses(ctx, s, procs)
	if err != nil {
		return run, err
	}
	rdb, err := redisstore.NewClient(ctx, s.servers.RedisURL())
	if err != nil {
		return run, err
	}
	defer rdb.Close()
	indicators, err := s.js.Stream(ctx, contract.StreamIndicators)
	if err != nil {
		return run, err
	}
	info, err := indicators.Info(ctx)
	if err != nil {
		return run, err
	}
	seq0 := info.State.LastSeq
	eval0, err := alertsEvaluations(s, n)
	if err != nil {
		return run, err
	}
	src := newCandleSource(accounts, symbols, bars)
	began := time.Now()
	if err := feedCandles(ctx, s.js, redisstore.New(rdb, 0), src, bars); err != nil {
		return run, err
	}
	// Every candle update makes one indicator update; alerts evaluate
	// each once.
	err = poll(ctx, 5*time.Minute, fmt.Sprintf("alerts to evaluate %d updates", run.Updates), func() (bool, error) {
		evals, err := alertsEvaluations(s, n)
		return evals-eval0 >= int64(run.Updates), err
	})
	if err != nil {
		return run, fmt.Errorf("%w (logs in %s)", err, s.logDir())
	}
	run.Seconds = time.Since(began).Seconds()
	run.Rate = float64(run.Updates) / run.Seconds
	if info, err = indicators.Info(ctx); err != nil {
		return run, err
	}
	run.IndicatorUpdates = int64(info.State.LastSeq - seq0)
	after, err := scaleOutUses(ctx, s, procs)
	if err != nil {
		return run, err
	}
	for _, p := range procs {
		b, a := before[p.Instance], after[p.Instance]
		if run.PerInstance[p.Service] == nil {
			run.PerInstance[p.Service] = map[string]scaleOutUse{}
		}
		run.PerInstance[p.Service][p.Instance] = scaleOutUse{Received: a.Received - b.Received,
			CPUSeconds: a.CPUSeconds - b.CPUSeconds, Partitions: a.Partitions}
	}
	return run, nil
}

// waitScaleOutReady waits until the n instances of indicators run every
// series between them, the n of alerts every user with their rules, and
// each instance owns partitions.
func waitScaleOutReady(ctx context.Context, s *benchStack, n, series, users int) error {
	what := fmt.Sprintf("%d indicators instances running %d series and %d alerts instances %d users", n, series, n, users)
	return poll(ctx, 5*time.Minute, what, func() (bool, error) {
		ind, err := statuses[contract.IndicatorsStatus](s.nc, contract.SvcIndicators, n)
		if err != nil || len(ind) != n {
			return false, err
		}
		running, parts := 0, 0
		for _, st := range ind {
			if len(st.Partitions) == 0 {
				return false, nil
			}
			parts += len(st.Partitions)
			for _, u := range st.Users {
				running += u.Series
			}
		}
		if running != series || parts != natsx.DefaultPartitions {
			return false, nil
		}
		al, err := statuses[contract.AlertsStatus](s.nc, contract.SvcAlerts, n)
		if err != nil || len(al) != n {
			return false, err
		}
		loaded, parts := 0, 0
		for _, st := range al {
			if len(st.Partitions) == 0 {
				return false, nil
			}
			parts += len(st.Partitions)
			for _, u := range st.Users {
				if u.RulesLoaded > 0 {
					loaded++
				}
			}
		}
		return loaded == users && parts == natsx.DefaultPartitions, nil
	})
}

// alertsEvaluations is the sum of the evaluations the n alerts instances
// report.
func alertsEvaluations(s *benchStack, n int) (int64, error) {
	st, err := statuses[contract.AlertsStatus](s.nc, contract.SvcAlerts, n)
	if err != nil {
		return 0, err
	}
	if len(st) != n {
		return 0, fmt.Errorf("%w: %d of %d vigil-alerts instances answered status", ErrFigure, len(st), n)
	}
	var sum int64
	for _, one := range st {
		for _, u := range one.Users {
			sum += u.Evaluations
		}
	}
	return sum, nil
}

// scaleOutUses reads every process's CPU time and its consumer's
// delivered count, by instance name.
func scaleOutUses(ctx context.Context, s *benchStack, procs []*stack.Proc) (map[string]scaleOutUse, error) {
	out := map[string]scaleOutUse{}
	streams := map[string]string{stack.Indicators: contract.StreamCandles, stack.Alerts: contract.StreamIndicators}
	for _, svc := range []string{stack.Indicators, stack.Alerts} {
		ids := s.launcher.Instances(svc)
		for _, p := range procs {
			if p.Service != svc {
				continue
			}
			cpu, err := p.CPUTime()
			if err != nil {
				return nil, err
			}
			id, ok := ids[p.Instance]
			if !ok {
				return nil, fmt.Errorf("%w: %s is not registered", ErrFigure, p.Instance)
			}
			cons, err := s.js.Consumer(ctx, streams[svc], svc+"-"+id)
			if err != nil {
				return nil, fmt.Errorf("consumer of %s: %w", p.Instance, err)
			}
			info, err := cons.Info(ctx)
			if err != nil {
				return nil, err
			}
			out[p.Instance] = scaleOutUse{Received: info.Delivered.Consumer, CPUSeconds: cpu.Seconds(),
				Partitions: len(info.Config.FilterSubjects)}
		}
	}
	return out, nil
}
