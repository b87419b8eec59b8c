package stats

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(100 - i) // 100..1, unsorted
	}
	tests := []struct {
		name string
		xs   []float64
		want Summary
	}{
		{"empty", nil, Summary{}},
		{"one", []float64{3}, Summary{N: 1, Median: 3, P1: 3, P99: 3, Min: 3, Max: 3, Mean: 3}},
		{"even count takes the middle mean", []float64{4, 1, 3, 2}, Summary{N: 4, Median: 2.5, P1: 1, P99: 4, Min: 1, Max: 4, Mean: 2.5}},
		{"hundred", hundred, Summary{N: 100, Median: 50.5, P1: 1, P99: 99, Min: 1, Max: 100, Mean: 50.5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Summarize(tt.xs); got != tt.want {
				t.Fatalf("Summarize = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestMillis(t *testing.T) {
	got := Millis([]time.Duration{1500 * time.Microsecond, 2 * time.Second})
	if got[0] != 1.5 || got[1] != 2000 {
		t.Fatalf("Millis = %v, want [1.5 2000]", got)
	}
}
