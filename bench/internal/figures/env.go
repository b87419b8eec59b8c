// Package figures measures the rows of issue 9's table, each against a
// baseline measured in the same run: command ACK latency (ack), pause and
// resume end to end (sequence), the candle pipeline (pipeline), indicator
// updates against go-talib (ta), clear-cache (clear), force-backfill's
// request rate (backfill) and memory (memory; the RSS part comes from
// pipeline); and issue 13's scale-out figure (scaleout): each indicators
// and alerts instance's messages and CPU per 1,000 candle updates with 1,
// 2 and 3 instances; and the marginal cost of one more user on watched
// products (peruser), with the feed's quiet rounds and without.
//
// Each figure starts what it needs itself: the servers (pkg/localstack),
// users seeded with pkg/db, and the real service binaries as processes.
package figures

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"vigil.dev/bench/internal/report"
	"vigil.dev/bench/internal/stack"
)

// ErrFigure reports a figure that could not be measured.
var ErrFigure = errors.New("figure not measured")

// Options tune the size of the figures.
type Options struct {
	// AckIterations is the number of commands (and bare requests) of ack.
	AckIterations int
	// SequenceIterations is the number of pauses (and as many resumes)
	// per instance count of sequence.
	SequenceIterations int
	// PipelineSeries are the series counts of pipeline.
	PipelineSeries []int
	// PipelineUpdates is about how many candle updates pipeline sends at
	// each series count (at least PipelineMinBars per series).
	PipelineUpdates int
	// ClearKeys and ClearUsers size clear.
	ClearKeys, ClearUsers int
	// BackfillPages is the number of REST pages of backfill.
	BackfillPages int
	// BenchCount and BenchTime are go test's -count and -benchtime for ta.
	BenchCount int
	BenchTime  string
	// ScaleOutSeries and ScaleOutBars size scaleout: about that many
	// series, that many closed bars each.
	ScaleOutSeries, ScaleOutBars int
}

// PipelineMinBars is the fewest closed bars pipeline sends per series.
const PipelineMinBars = 10

// Env is what the figures share.
type Env struct {
	// Root is the repository root.
	Root string
	// Work is the run's scratch directory.
	Work string
	Bins *stack.Binaries
	// Overlay is the go build -overlay file (stack.Overlay).
	Overlay string
	Log     *slog.Logger
	Opts    Options
	// ProfileDir receives the pprof -top of profiled services; empty
	// means no profiling.
	ProfileDir string

	shared *controlStack // ack and sequence's stack, see sharedStack
}

// Output collects what the figures measured.
type Output struct {
	mu       sync.Mutex
	Rows     []report.Row
	Details  map[string]any
	Profiles []string
}

// add records rows and the figure's details.
func (o *Output) add(figure string, details any, rows ...report.Row) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.Rows = append(o.Rows, rows...)
	if o.Details == nil {
		o.Details = map[string]any{}
	}
	if details != nil {
		o.Details[figure] = details
	}
}

// Figure is one measurable figure.
type Figure struct {
	// Name is what -only selects.
	Name string
	// Number is the row of issue 9's table.
	Number int
	// Run measures the figure into out.
	Run func(ctx context.Context, env *Env, out *Output) error
}

// All are the figures in the order they run.
var All = []Figure{
	{"ta", 4, TA},
	{"memory", 7, Memory},
	{"ack", 1, Ack},
	{"sequence", 2, Sequence},
	{"clear", 5, Clear},
	{"backfill", 6, Backfill},
	{"pipeline", 3, Pipeline},
	{"scaleout", scaleOutNumber, ScaleOut},
	{"peruser", perUserNumber, PerUser},
}

// Close stops what figures left running (the shared stack).
func (e *Env) Close() error {
	if e.shared == nil {
		return nil
	}
	err := e.shared.Close()
	e.shared = nil
	return err
}

// profile records the CPU profile of procs for d in the background when
// profiling is on; the returned wait collects them and stores each
// profile's pprof -top next to the results.
func (e *Env) profile(ctx context.Context, figure string, procs []*stack.Proc, d time.Duration, out *Output) (wait func()) {
	if e.ProfileDir == "" {
		return func() {}
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() {
			prof, err := p.CPUProfile(ctx, d)
			if err != nil {
				e.Log.Warn("profile failed", "figure", figure, "instance", p.Instance, "err", err)
				return
			}
			raw := filepath.Join(e.Work, figure+"-"+p.Instance+".pb.gz")
			if err := os.WriteFile(raw, prof, 0o644); err != nil {
				e.Log.Warn("profile not saved", "err", err)
				return
			}
			top, err := pprofTop(ctx, raw)
			if err != nil {
				e.Log.Warn("pprof -top failed", "figure", figure, "instance", p.Instance, "err", err)
				return
			}
			path := filepath.Join(e.ProfileDir, figure+"-"+p.Instance+".txt")
			header := fmt.Sprintf("# %s: CPU profile of %s (%s) over %s, go tool pprof -top\n", figure, p.Instance, p.Service, d)
			if err := os.WriteFile(path, append([]byte(header), top...), 0o644); err != nil {
				e.Log.Warn("profile not saved", "err", err)
				return
			}
			out.mu.Lock()
			out.Profiles = append(out.Profiles, path)
			out.mu.Unlock()
		})
	}
	return wg.Wait
}

// pprofTop is `go tool pprof -top` of a profile, flat and cumulative.
func pprofTop(ctx context.Context, path string) ([]byte, error) {
	var all []byte
	for _, args := range [][]string{{"-top", "-nodecount=30"}, {"-top", "-cum", "-nodecount=40"}} {
		cmd := exec.CommandContext(ctx, "go", append(append([]string{"tool", "pprof"}, args...), path)...)
		var outb, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &outb, &errb
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("go tool pprof %s: %v: %s", strings.Join(args, " "), err, errb.String())
		}
		all = append(all, []byte("\n$ go tool pprof "+strings.Join(args, " ")+"\n")...)
		all = append(all, outb.Bytes()...)
	}
	return all, nil
}
