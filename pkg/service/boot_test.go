package service_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/service"
	"vigil.dev/pkg/testenv"
)

// TestServeShutsDownInReverseOrder: Runtime.Serve runs start, logs
// "running" and, once the context ends, stops the parts in the reverse
// order of their start (a Go part's context ends at its place), then
// closes the resources; a start that fails half
// way stops exactly the parts that had started and returns its error.
func TestServeShutsDownInReverseOrder(t *testing.T) {
	url := testenv.StartNATS(t).URL()
	var mu sync.Mutex
	var order []string
	record := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, s)
	}
	// start opens a resource, starts the micro service and three parts,
	// and fails after the second when fail is set.
	start := func(rt *service.Runtime, fail bool) func(context.Context) error {
		return func(context.Context) error {
			rt.OnClose(func() { record("close resource") })
			svc, err := rt.Start(service.Config{Svc: contract.SvcFeed, Description: "test"}, func(context.Context, string) any { return "up" })
			if err != nil {
				return err
			}
			svc.OnShutdown(func(context.Context) error { record("stop first"); return nil })
			svc.Go(func(ctx context.Context) error {
				<-ctx.Done()
				record("stop second")
				return nil
			})
			if fail {
				return errors.New("third part failed")
			}
			svc.OnShutdown(func(context.Context) error { record("stop third"); return nil })
			return nil
		}
	}
	boot := func(ctx context.Context, out *testenv.Buffer) *service.Runtime {
		cfg := struct {
			config.Service
			config.NATS
		}{config.Service{Instance: "f1", LogLevel: "info", ShutdownTimeout: 5 * time.Second}, config.NATS{URL: url, Partitions: config.DefaultPartitions}}
		rt, err := service.Boot(ctx, contract.ServiceFeed, cfg.Service, cfg.NATS, &cfg, out)
		if err != nil {
			t.Fatal(err)
		}
		return rt
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out testenv.Buffer
	rt := boot(ctx, &out)
	done := make(chan error, 1)
	go func() { done <- rt.Serve(ctx, start(rt, false)) }()
	testenv.WaitFor(t, 20*time.Second, "the running line", func() bool { return strings.Contains(out.String(), `"msg":"running"`) })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if want := []string{"stop third", "stop second", "stop first", "close resource"}; !slices.Equal(order, want) {
		t.Errorf("shutdown order %q, want %q", order, want)
	}

	order = nil
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	rt = boot(ctx2, &out)
	if err := rt.Serve(ctx2, start(rt, true)); err == nil || !strings.Contains(err.Error(), "third part failed") {
		t.Fatalf("Serve with a failing start = %v, want its error", err)
	}
	if want := []string{"stop second", "stop first", "close resource"}; !slices.Equal(order, want) {
		t.Errorf("after a failed start %q, want %q", order, want)
	}
}
