// Package stats summarises repeated measurements: the median and a tail
// percentile, by the nearest-rank method on the sorted samples.
package stats

import (
	"math"
	"slices"
	"time"
)

// Summary describes a set of samples.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	P1     float64 `json:"p1"`
	P99    float64 `json:"p99"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	Mean   float64 `json:"mean"`
}

// Summarize summarises xs; the zero Summary when xs is empty.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	return Summary{N: len(s), Median: Percentile(s, 50), P1: Percentile(s, 1), P99: Percentile(s, 99),
		Min: s[0], Max: s[len(s)-1], Mean: sum / float64(len(s))}
}

// Percentile is the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest sample with at least p % of the
// samples at or below it. For p = 50 and an even count it is the mean of
// the two middle samples.
func Percentile(sorted []float64, p float64) float64 {
	n := len(sorted)
	if n == 0 {
		return math.NaN()
	}
	if p == 50 && n%2 == 0 {
		return (sorted[n/2-1] + sorted[n/2]) / 2
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	return sorted[min(max(rank, 1), n)-1]
}

// Millis converts durations to milliseconds.
func Millis(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d.Nanoseconds()) / 1e6
	}
	return out
}
