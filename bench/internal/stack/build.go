package stack

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"vigil.dev/pkg/binaries"
)

// ErrBuild reports a binary or test that does not compile.
var ErrBuild = errors.New("stack: build failed")

// The service binaries a stack runs, and the fake Coinbase server.
const (
	Feed         = "vigil-feed"
	Indicators   = "vigil-indicators"
	Alerts       = "vigil-alerts"
	Control      = "vigil-control"
	FakeCoinbase = "bench-fakecoinbase"
)

// packages maps each binary to its package, relative to the repository.
var packages = func() map[string]string {
	m := map[string]string{FakeCoinbase: "./services/feed/cmd/benchfakecoinbase"}
	for _, b := range binaries.Services {
		m[b.Name] = b.Package
	}
	return m
}()

// services are the binaries that may get the profiling file.
var services = []string{Feed, Indicators, Alerts, Control}

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
		for _, svc := range services {
			if err := add(filepath.Join(packages[svc], "zz_bench_pprof.go"), "pprof.go"); err != nil {
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

// Build builds every binary of a stack from the repository at root into
// dir (incremental, through the go build cache), with the overlay file
// overlay (see Overlay).
func Build(ctx context.Context, root, dir, overlay string, profiling bool) (*Binaries, error) {
	for _, name := range append(services, FakeCoinbase) {
		cmd := exec.CommandContext(ctx, "go", "build", "-overlay", overlay, "-o", filepath.Join(dir, name), packages[name])
		cmd.Dir = root
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("%w: go build %s: %v\n%s", ErrBuild, packages[name], err, out.String())
		}
	}
	return &Binaries{Dir: dir, Profiling: profiling}, nil
}
