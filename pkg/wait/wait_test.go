package wait_test

import (
	"context"
	"testing"
	"time"

	"vigil.dev/pkg/wait"
)

func TestSleep(t *testing.T) {
	if !wait.Sleep(context.Background(), time.Millisecond) {
		t.Error("a sleep whose context does not end reported false")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if wait.Sleep(ctx, time.Hour) {
		t.Error("a sleep whose context ended reported true")
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("a cancelled sleep took %v", d)
	}
}
