// Command bench is `make bench`: it measures the figures of issue 9 on a
// private vigil stack it starts itself — NATS (embedded), Redis and
// PostgreSQL from pkg/localstack, the real service binaries as processes —
// each against a baseline measured in the same run, prints one table with
// the ratios, and stores the results as JSON in bench/results/<date>.json.
//
// Run it from the repository: go run ./bench/cmd/bench [-only ack,sequence,...]
// (-h lists the flags). Figures: ack, sequence, pipeline, ta, clear,
// backfill, memory, scaleout, peruser.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"vigil.dev/bench/internal/figures"
	"vigil.dev/bench/internal/report"
	"vigil.dev/bench/internal/stack"
	"vigil.dev/pkg/localstack"
)

// runTimeout bounds the whole run.
const runTimeout = 40 * time.Minute

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if url := os.Getenv(figures.FloorResponderEnv); url != "" {
		if err := figures.ServeFloor(ctx, url); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

// flags are the command line.
type flags struct {
	only    string
	out     string
	profile bool
	keep    bool
	quick   bool
	series  string
	opts    figures.Options
}

func parseFlags(args []string, stderr io.Writer) (flags, error) {
	var f flags
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	names := make([]string, len(figures.All))
	for i, fig := range figures.All {
		names[i] = fig.Name
	}
	fs.StringVar(&f.only, "only", "", "comma-separated figures to run (default all): "+strings.Join(names, ","))
	fs.StringVar(&f.out, "out", "", "directory of the JSON results (default bench/results)")
	fs.BoolVar(&f.profile, "profile", false, "record CPU profiles of the services under load and store their pprof -top next to the results")
	fs.BoolVar(&f.keep, "keep", false, "keep the scratch directory (servers' data, service logs, raw profiles)")
	fs.BoolVar(&f.quick, "quick", false, "small sizes, for checking the runner (results named <date>-quick)")
	fs.IntVar(&f.opts.AckIterations, "ack-iterations", 1000, "ack: commands sent (and as many bare requests)")
	fs.IntVar(&f.opts.SequenceIterations, "sequence-iterations", 30, "sequence: pauses and as many resumes per instance count")
	fs.StringVar(&f.series, "pipeline-series", "1000,10000", "pipeline: series counts")
	fs.IntVar(&f.opts.PipelineUpdates, "pipeline-updates", 50000, fmt.Sprintf("pipeline: candle updates per series count (at least %d bars per series)", figures.PipelineMinBars))
	fs.IntVar(&f.opts.ClearKeys, "clear-keys", 1_000_000, "clear: keys in Redis")
	fs.IntVar(&f.opts.ClearUsers, "clear-users", 10, "clear: users the keys belong to")
	fs.IntVar(&f.opts.BackfillPages, "backfill-pages", 40, "backfill: REST pages of 300 1m candles")
	fs.IntVar(&f.opts.ScaleOutSeries, "scaleout-series", 1000, "scaleout: series (with 1, 2 and 3 instances each)")
	fs.IntVar(&f.opts.ScaleOutBars, "scaleout-bars", 20, fmt.Sprintf("scaleout: closed bars per series (at least %d)", figures.PipelineMinBars))
	fs.IntVar(&f.opts.BenchCount, "bench-count", 5, "ta: go test -count")
	fs.StringVar(&f.opts.BenchTime, "benchtime", "200ms", "ta: go test -benchtime")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if f.quick {
		// Small sizes for the flags not given explicitly.
		set := map[string]bool{}
		fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
		quick := map[string]string{"ack-iterations": "100", "sequence-iterations": "4", "pipeline-updates": "4000",
			"pipeline-series": "200,1000", "scaleout-series": "300", "scaleout-bars": "10", "clear-keys": "100000", "backfill-pages": "8", "bench-count": "2", "benchtime": "50ms"}
		for name, value := range quick {
			if !set[name] {
				if err := fs.Set(name, value); err != nil {
					return f, err
				}
			}
		}
	}
	for _, s := range strings.Split(f.series, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return f, fmt.Errorf("-pipeline-series: %q is not a positive count", s)
		}
		f.opts.PipelineSeries = append(f.opts.PipelineSeries, n)
	}
	if f.opts.AckIterations < 1 || f.opts.SequenceIterations < 1 || f.opts.ClearUsers < 1 || f.opts.ClearKeys < f.opts.ClearUsers ||
		f.opts.BackfillPages < 2 || f.opts.BenchCount < 1 || f.opts.PipelineUpdates < 1 || f.opts.ScaleOutSeries < 1 || f.opts.ScaleOutBars < 1 {
		return f, errors.New("counts must be positive (clear-keys at least clear-users, backfill-pages at least 2)")
	}
	return f, nil
}

// selected are the figures -only names, in run order.
func selected(only string) ([]figures.Figure, error) {
	if only == "" {
		return figures.All, nil
	}
	var out []figures.Figure
	for _, name := range strings.Split(only, ",") {
		i := slices.IndexFunc(figures.All, func(f figures.Figure) bool { return f.Name == strings.TrimSpace(name) })
		if i < 0 {
			return nil, fmt.Errorf("-only: %q is not a figure", name)
		}
		out = append(out, figures.All[i])
	}
	slices.SortStableFunc(out, func(a, b figures.Figure) int {
		return slices.IndexFunc(figures.All, func(f figures.Figure) bool { return f.Name == a.Name }) -
			slices.IndexFunc(figures.All, func(f figures.Figure) bool { return f.Name == b.Name })
	})
	return slices.CompactFunc(out, func(a, b figures.Figure) bool { return a.Name == b.Name }), nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	figs, err := selected(f.only)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, runTimeout)
	defer cancel()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	root, err := localstack.RepoRoot()
	if err != nil {
		return err
	}
	if f.out == "" {
		f.out = filepath.Join(root, "bench", "results")
	}
	started := time.Now()
	date := started.UTC().Format("2006-01-02")
	name := date
	if f.only != "" {
		var ns []string
		for _, fig := range figs {
			ns = append(ns, fig.Name)
		}
		name += "-" + strings.Join(ns, "-")
	}
	if f.quick {
		name += "-quick"
	}
	work, err := os.MkdirTemp("", "vigil-bench-")
	if err != nil {
		return err
	}
	if f.keep {
		log.Info("scratch directory kept", "dir", work)
	} else {
		defer os.RemoveAll(work)
	}
	env := &figures.Env{Root: root, Work: work, Log: log, Opts: f.opts}
	if f.profile {
		env.ProfileDir = filepath.Join(f.out, "profiles", name)
		if err := os.MkdirAll(env.ProfileDir, 0o755); err != nil {
			return err
		}
	}
	if env.Overlay, err = stack.Overlay(root, filepath.Join(work, "overlay"), f.profile); err != nil {
		return err
	}
	result := &report.Run{Command: "go run ./bench/cmd/bench " + strings.Join(args, " "), StartedAt: started.UTC(),
		Machine: report.ThisMachine(), Errors: map[string]string{}}
	for _, fig := range figs {
		result.Figures = append(result.Figures, fig.Name)
	}
	if needsBinaries(figs) {
		log.Info("building the service binaries", "dir", filepath.Join(root, "bin", "bench"))
		if env.Bins, err = stack.Build(ctx, root, filepath.Join(root, "bin", "bench"), env.Overlay, f.profile); err != nil {
			return err
		}
	}
	var out figures.Output
	for _, fig := range figs {
		log.Info("figure", "name", fig.Name, "row", fig.Number)
		t0 := time.Now()
		if err := fig.Run(ctx, env, &out); err != nil {
			log.Error("figure failed", "name", fig.Name, "err", err)
			result.Errors[fig.Name] = err.Error()
			if ctx.Err() != nil {
				break
			}
		}
		log.Info("figure done", "name", fig.Name, "took", time.Since(t0).Round(time.Second))
	}
	if err := env.Close(); err != nil {
		log.Warn("stopping the stack", "err", err)
	}
	result.Rows, result.Details = out.Rows, out.Details
	for _, p := range out.Profiles {
		if rel, err := filepath.Rel(root, p); err == nil {
			p = rel
		}
		result.Profiles = append(result.Profiles, p)
	}
	slices.Sort(result.Profiles)
	slices.SortStableFunc(result.Rows, func(a, b report.Row) int { return a.Number - b.Number })
	result.FinishedAt = time.Now().UTC()
	result.Machine.LoadAtEnd = report.LoadAverage()
	if err := os.MkdirAll(f.out, 0o755); err != nil {
		return err
	}
	path := filepath.Join(f.out, name+".json")
	if err := result.WriteJSON(path); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nvigil benchmarks, %s, %d× %s, %d MiB, load %s → %s, took %s\n\n", date, result.Machine.CPUs, result.Machine.Model,
		result.Machine.MemoryKiB/1024, result.Machine.LoadAtStart, result.Machine.LoadAtEnd, time.Since(started).Round(time.Second))
	if err := result.WriteTable(stdout); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nresults: %s\n", path)
	if len(result.Errors) > 0 {
		return fmt.Errorf("%d figure(s) not measured", len(result.Errors))
	}
	return nil
}

// needsBinaries reports whether a figure runs the services.
func needsBinaries(figs []figures.Figure) bool {
	for _, f := range figs {
		if f.Name != "ta" && f.Name != "memory" {
			return true
		}
	}
	return false
}
