package figures

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"vigil.dev/bench/internal/report"
	"vigil.dev/bench/internal/stats"
)

// taPackage is the indicators' incremental TA package, whose benchmarks
// figures 4 and 7 run.
const taPackage = "./services/indicators/internal/ta/"

// benchResult is one line of go test -bench output: the metrics by unit.
type benchResult struct {
	Name    string
	Metrics map[string]float64
}

// benchLine matches "BenchmarkX/sub-2   123   45.6 ns/op   0 B/op ...".
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.+)$`)

// parseBench reads go test -bench output.
func parseBench(out []byte) []benchResult {
	var results []benchResult
	s := bufio.NewScanner(bytes.NewReader(out))
	for s.Scan() {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(s.Text()))
		if m == nil {
			continue
		}
		r := benchResult{Name: m[1], Metrics: map[string]float64{}}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				r.Metrics[f[i+1]] = v
			}
		}
		results = append(results, r)
	}
	return results
}

// goTest runs go test in the repository root and returns its output.
func (e *Env) goTest(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "go", append([]string{"test"}, args...)...)
	cmd.Dir = e.Root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	e.Log.Info("go test " + strings.Join(args, " "))
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go test %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.Bytes(), nil
}

// metricSamples groups one metric of the results by benchmark name.
func metricSamples(results []benchResult, unit string) map[string][]float64 {
	out := map[string][]float64{}
	for _, r := range results {
		if v, ok := r.Metrics[unit]; ok {
			out[r.Name] = append(out[r.Name], v)
		}
	}
	return out
}

// taTarget is figure 4's speed-up target of BenchmarkUpdate/<indicator>:
// the whole Series ("all") ≥ 150× a go-talib recompute, each single
// indicator ≥ 120×.
func taTarget(indicator string) float64 {
	if indicator == "all" {
		return 150
	}
	return 120
}

// TA measures figure 4: BenchmarkUpdate/<indicator> (one closed candle
// applied to a warm Series) against BenchmarkTalibRecompute/<indicator>
// (go-talib over the last 1000 candles). It runs go test BenchCount times
// (-count 1 each), so that every round measures both close together in
// time on a noisy machine; the ratio is taken per round.
func TA(ctx context.Context, env *Env, out *Output) error {
	var results []benchResult
	for range env.Opts.BenchCount {
		output, err := env.goTest(ctx, "-run", "^$", "-bench", "^(BenchmarkUpdate|BenchmarkTalibRecompute)$", "-benchmem",
			"-count", "1", "-benchtime", env.Opts.BenchTime, taPackage)
		if err != nil {
			return err
		}
		results = append(results, parseBench(output)...)
	}
	ns, allocs := metricSamples(results, "ns/op"), metricSamples(results, "allocs/op")
	var missed []string
	details := map[string]any{}
	for _, name := range slices.Sorted(maps.Keys(ns)) {
		updates := ns[name]
		indicator, ok := strings.CutPrefix(name, "BenchmarkUpdate/")
		if !ok {
			continue
		}
		details[name] = map[string]any{"ns_op": stats.Summarize(updates), "allocs_op": stats.Summarize(allocs[name])}
		talibName := "BenchmarkTalibRecompute/" + indicator
		talib, ok := ns[talibName]
		if !ok || len(talib) != len(updates) {
			continue
		}
		speedups := make([]float64, len(updates))
		for i := range updates {
			speedups[i] = talib[i] / updates[i]
		}
		speedup := stats.Summarize(speedups)
		details[talibName] = map[string]any{"ns_op": stats.Summarize(talib), "allocs_op": stats.Summarize(allocs[talibName])}
		details["speedup/"+indicator] = speedup
		maxAllocs := stats.Summarize(allocs[name]).Max
		target := taTarget(indicator)
		row := report.Row{Number: 4, Figure: "ta", Name: "indicator update " + indicator, Unit: "ns/op",
			Value: report.Times(stats.Summarize(updates)), Target: fmt.Sprintf("≥ %g× faster, 0 allocs", target)}
		row.Compare("go-talib recompute over 1000 candles", report.Times(stats.Summarize(talib)), true)
		if row.Ratio != nil {
			// Per round: the median and the worst (p1) speed-up.
			row.Ratio.Median, row.Ratio.Tail = speedup.Median, speedup.P1
		}
		row.SetMet(row.Ratio != nil && row.Ratio.Median >= target && maxAllocs == 0)
		row.Note = fmt.Sprintf("%g allocs/op (talib %g); ratio per round, tail = worst round", maxAllocs, stats.Summarize(allocs[talibName]).Max)
		if !*row.Met {
			missed = append(missed, indicator)
		}
		out.add("", nil, row)
	}
	out.add("ta", details)
	if len(missed) > 0 && env.ProfileDir != "" {
		return env.profileBench(ctx, "ta", "^BenchmarkUpdate$/^("+strings.Join(missed, "|")+")$", out)
	}
	return nil
}

// profileBench runs the benchmarks matching pattern with -cpuprofile and
// stores the profile's pprof -top.
func (e *Env) profileBench(ctx context.Context, figure, pattern string, out *Output) error {
	raw := filepath.Join(e.Work, figure+"-bench.pb.gz")
	if _, err := e.goTest(ctx, "-run", "^$", "-bench", pattern, "-benchmem", "-benchtime", "2s",
		"-cpuprofile", raw, "-o", filepath.Join(e.Work, figure+".test"), taPackage); err != nil {
		return err
	}
	top, err := pprofTop(ctx, raw)
	if err != nil {
		return err
	}
	path := filepath.Join(e.ProfileDir, figure+"-benchmarks.txt")
	header := fmt.Sprintf("# %s: go test -bench '%s' -cpuprofile, go tool pprof -top\n", figure, pattern)
	if err := os.WriteFile(path, append([]byte(header), top...), 0o644); err != nil {
		return err
	}
	out.mu.Lock()
	out.Profiles = append(out.Profiles, path)
	out.mu.Unlock()
	return nil
}

// Memory measures the first half of figure 7: the heap held by one
// Series of a mode's default indicators (runtime.MemStats delta over 200
// live series, after 1200 bars), with BenchmarkSeriesMemory added to the
// ta package by the overlay (stack.Overlay). The RSS half comes from
// Pipeline.
func Memory(ctx context.Context, env *Env, out *Output) error {
	output, err := env.goTest(ctx, "-overlay", env.Overlay, "-run", "^$", "-bench", "^BenchmarkSeriesMemory$",
		"-benchtime", "2x", "-count", "3", taPackage)
	if err != nil {
		return err
	}
	results := parseBench(output)
	perSeries := metricSamples(results, "B/series")
	indicators := metricSamples(results, "indicators")
	details := map[string]any{}
	for _, name := range slices.Sorted(maps.Keys(perSeries)) {
		mode := strings.TrimPrefix(name, "BenchmarkSeriesMemory/")
		s := stats.Summarize(perSeries[name])
		details[mode] = map[string]any{"bytes_per_series": s, "indicators": stats.Summarize(indicators[name]).Median}
		row := report.Row{Number: 7, Figure: "memory", Name: "indicator state per series, " + mode + " defaults", Unit: "KiB",
			Value: report.Worst(stats.Summarize(scale(perSeries[name], 1.0/1024))), Target: "reported",
			Note: fmt.Sprintf("%g indicators, replay depth 1000; ×10k series = %.2f GiB", stats.Summarize(indicators[name]).Median, s.Median*10_000/(1<<30))}
		out.add("", nil, row)
	}
	out.add("memory", details)
	return nil
}

// scale multiplies every sample by f.
func scale(xs []float64, f float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = x * f
	}
	return out
}
