package stack

import (
	"context"
	"embed"
	"encoding/json"

	"fmt"
	"os"
	"path/filepath"
	"vigil.dev/pkg/binaries"
)

// The service binaries a stack runs (names of binaries.Services), and the
// fake Coinbase server.
const (
	Feed         = "vigil-feed"
	Indicators   = "vigil-indicators"
	Alerts       = "vigil-alerts"
	Control      = "vigil-control"
	FakeCoinbase = "bench-fakecoinbase"
)

// fakeCoinbase is the fake Coinbase server, a main package only the
// overlay adds.
var fakeCoinbase = binaries.Binary{Name: FakeCoinbase, Package: "./services/feed/cmd/benchfakecoinbase"}

// overlaySources are the files the runner adds to the services' tree at
// build time (go build -overlay), never on disk: the pprof server of a
// profiled service, the fake Coinbase main and the memory benchmark.
//
//go:embed _overlay/pprof.go _overlay/fakecoinbase.go _overlay/ta_memory_test.go
var overlaySources embed.FS

// Binaries are the built binaries of one run.
type Binaries struct {
	// Dir holds the binaries.
	Dir string
	// Profiling is true when the services serve net/http/pprof (see
	// Launcher).
	Profiling bool
}

// Path is the path of binary name.
func (b *Binaries) Path(name string) string { return filepath.Join(b.Dir, name) }

// Overlay writes the overlay sources to dir and returns the path of a go
// build -overlay file that adds them to the repository at root: the fake
// Coinbase main, the ta memory benchmark, and with profiling the pprof
// file in every service's package main.
func Overlay(root, dir string, profiling bool) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("stack: overlay: %w", err)
	}
	write := func(name string) (string, error) {
		src, err := overlaySources.ReadFile("_overlay/" + name)
		if err != nil {
			return "", err
		}
		path := filepath.Join(dir, name)
		return path, os.WriteFile(path, src, 0o644)
	}
	replace := map[string]string{}
	add := func(target, name string) error {
		path, err := write(name)
		if err != nil {
			return fmt.Errorf("stack: overlay %s: %w", name, err)
		}
		replace[filepath.Join(root, target)] = path
		return nil
	}
	if err := add("services/feed/cmd/benchfakecoinbase/main.go", "fakecoinbase.go"); err != nil {
		return "", err
	}
	if err := add("services/indicators/internal/ta/zz_bench_memory_test.go", "ta_memory_test.go"); err != nil {
		return "", err
	}
	if profiling {
		for _, svc := range binaries.Services {
			if err := add(filepath.Join(svc.Package, "zz_bench_pprof.go"), "pprof.go"); err != nil {
				return "", err
			}
		}
	}
	data, err := json.Marshal(map[string]any{"Replace": replace})
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "overlay.json")
	return path, os.WriteFile(path, data, 0o644)
}

// Build builds every binary of a stack (binaries.Services and the fake
// Coinbase server) from the repository at root into dir with the overlay
// file overlay (see Overlay), reusing an up-to-date build (binaries.Build).
func Build(ctx context.Context, root, dir, overlay string, profiling bool) (*Binaries, error) {
	bins := append(append([]binaries.Binary(nil), binaries.Services...), fakeCoinbase)
	if err := binaries.Build(ctx, root, dir, bins, "-overlay", overlay); err != nil {
		return nil, err
	}
	return &Binaries{Dir: dir, Profiling: profiling}, nil
}
