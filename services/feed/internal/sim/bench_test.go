package sim

import (
	"context"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
)

func BenchmarkHistory1d30(b *testing.B) {
	s, _ := New(Config{Seed: 1, Speed: 60}, nil)
	now := s.Now()
	for b.Loop() {
		if _, err := s.History(context.Background(), "BTC-USD", contract.TF1d, now.Add(-30*24*time.Hour), now); err != nil {
			b.Fatal(err)
		}
	}
}
