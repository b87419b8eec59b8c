// Package report holds the benchmark results: one Row per figure, each
// with its baseline from the same run and their ratio, the machine they
// ran on, the table the runner prints and the JSON it stores.
package report

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"vigil.dev/bench/internal/stats"
)

// Stat is one side of a row: the median and a tail of repeated samples.
type Stat struct {
	// N is the number of samples.
	N      int     `json:"n"`
	Median float64 `json:"median"`
	// Tail is the slow tail: p99 of times, p1 of rates, max of stalls
	// (TailName says which).
	Tail     float64 `json:"tail"`
	TailName string  `json:"tail_name"`
}

// Times is the Stat of time-like samples (lower is better): median and p99.
func Times(s stats.Summary) Stat {
	return Stat{N: s.N, Median: s.Median, Tail: s.P99, TailName: "p99"}
}

// Rates is the Stat of rate-like samples (higher is better): median and p1.
func Rates(s stats.Summary) Stat {
	return Stat{N: s.N, Median: s.Median, Tail: s.P1, TailName: "p1"}
}

// Worst is the Stat of samples whose worst case matters: median and max.
func Worst(s stats.Summary) Stat {
	return Stat{N: s.N, Median: s.Median, Tail: s.Max, TailName: "max"}
}

// Single is the Stat of one measurement.
func Single(v float64) Stat { return Stat{N: 1, Median: v, Tail: v, TailName: "single"} }

// Ratio compares a row's value with its baseline.
type Ratio struct {
	Median float64 `json:"median"`
	Tail   float64 `json:"tail"`
	// Of says how it is computed: "vigil/baseline" or "baseline/vigil".
	Of string `json:"of"`
}

// Row is one figure of the table.
type Row struct {
	// Number is the row of issue 9's table (1-7).
	Number int `json:"number"`
	// Figure is the runner's figure name (-only).
	Figure string `json:"figure"`
	Name   string `json:"name"`
	Unit   string `json:"unit"`
	Value  Stat   `json:"value"`
	// Baseline is nil for figures without one (memory).
	Baseline     *Stat  `json:"baseline,omitempty"`
	BaselineName string `json:"baseline_name,omitempty"`
	Ratio        *Ratio `json:"ratio,omitempty"`
	Target       string `json:"target"`
	// Met is nil when the row has no target to meet.
	Met  *bool  `json:"met,omitempty"`
	Note string `json:"note,omitempty"`
}

// Compare sets the row's baseline and the ratio of value to baseline
// (inverse: baseline to value, for "times faster"). The ratio is left out
// when its divisor is zero.
func (r *Row) Compare(name string, baseline Stat, inverse bool) {
	r.Baseline, r.BaselineName = &baseline, name
	if baseline.Median == 0 || baseline.Tail == 0 || r.Value.Median == 0 || r.Value.Tail == 0 {
		r.Ratio = nil
		return
	}
	if inverse {
		r.Ratio = &Ratio{Median: div(baseline.Median, r.Value.Median), Tail: div(baseline.Tail, r.Value.Tail), Of: "baseline/vigil"}
	} else {
		r.Ratio = &Ratio{Median: div(r.Value.Median, baseline.Median), Tail: div(r.Value.Tail, baseline.Tail), Of: "vigil/baseline"}
	}
}

// SetMet records whether the row met its target.
func (r *Row) SetMet(ok bool) { r.Met = &ok }

func div(a, b float64) float64 { return a / b }

// Machine describes where the run happened.
type Machine struct {
	CPUs      int    `json:"nproc"`
	Model     string `json:"cpu_model"`
	MemoryKiB int64  `json:"mem_total_kib"`
	Go        string `json:"go"`
	OS        string `json:"os"`
	// LoadAverage is /proc/loadavg at the start and at the end of the run
	// (the machine is shared).
	LoadAtStart string `json:"loadavg_start"`
	LoadAtEnd   string `json:"loadavg_end,omitempty"`
}

// ThisMachine reads the machine's description from /proc.
func ThisMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, LoadAtStart: LoadAverage()}
	m.Model = firstField("/proc/cpuinfo", "model name")
	if kb := firstField("/proc/meminfo", "MemTotal"); kb != "" {
		fmt.Sscanf(kb, "%d", &m.MemoryKiB)
	}
	return m
}

// LoadAverage is the first three fields of /proc/loadavg.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// firstField is the value of the first "key: value" line of path.
func firstField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Run is the result of one runner invocation.
type Run struct {
	Command    string    `json:"command"`
	Figures    []string  `json:"figures"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	Machine    Machine   `json:"machine"`
	Rows       []Row     `json:"rows"`
	// Details are each figure's supporting numbers, by figure.
	Details map[string]any `json:"details"`
	// Profiles are the files holding pprof -top of the profiled services.
	Profiles []string `json:"profiles,omitempty"`
	// Errors are the figures that could not be measured, and why.
	Errors map[string]string `json:"errors,omitempty"`
}

// WriteJSON writes the run as indented JSON to path.
func (r *Run) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// WriteTable prints the rows as one aligned table.
func (r *Run) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tfigure\tvigil (median / tail)\tbaseline (median / tail)\tratio (median / tail)\ttarget\tmet\tnote")
	for _, row := range r.Rows {
		base, ratio := "—", "—"
		if row.Baseline != nil {
			base = fmt.Sprintf("%s  [%s]", pair(*row.Baseline), row.BaselineName)
		}
		if row.Ratio != nil {
			ratio = fmt.Sprintf("%s / %s  (%s)", num(row.Ratio.Median), num(row.Ratio.Tail), row.Ratio.Of)
		}
		met := "—"
		if row.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*row.Met]
		}
		fmt.Fprintf(tw, "%d\t%s (%s)\t%s\t%s\t%s\t%s\t%s\t%s\n", row.Number, row.Name, row.Unit, pair(row.Value), base, ratio, row.Target, met, row.Note)
	}
	for _, fig := range slices.Sorted(maps.Keys(r.Errors)) {
		fmt.Fprintf(tw, "-\t%s\tnot measured: %s\t\t\t\t\t\n", fig, strings.ReplaceAll(r.Errors[fig], "\n", " "))
	}
	return tw.Flush()
}

// pair renders a Stat as "median / tail tailname".
func pair(s Stat) string {
	if s.TailName == "single" {
		return num(s.Median)
	}
	return fmt.Sprintf("%s / %s %s", num(s.Median), num(s.Tail), s.TailName)
}

// num renders a number with about four significant digits.
func num(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "n/a"
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	case a == 0:
		return "0"
	case a >= 0.01:
		return fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%.2g", v)
}
