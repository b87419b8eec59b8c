// Package binaries is the one list of vigil's programs and the Go
// packages they are built from, and the one build of them (Build): the
// tests (pkg/testenv), the benchmark (bench/internal/stack, with its
// overlay) and the dev stack (deploy/devstack) build with it.
package binaries

import "strings"

// Binary is one program of the repository.
type Binary struct {
	// Name is the executable's name: vigil-feed, ..., vigilctl.
	Name string
	// Package is its main package, relative to the repository root.
	Package string
}

// Short is the name without the "vigil-" prefix: feed, indicators,
// alerts, control (vigilctl stays vigilctl).
func (b Binary) Short() string { return strings.TrimPrefix(b.Name, "vigil-") }

// Services are the four services, in the order a stack starts them.
var Services = []Binary{
	{Name: "vigil-feed", Package: "./services/feed"},
	{Name: "vigil-indicators", Package: "./services/indicators"},
	{Name: "vigil-alerts", Package: "./services/alerts"},
	{Name: "vigil-control", Package: "./services/control"},
}

// Vigilctl is the operator CLI.
var Vigilctl = Binary{Name: "vigilctl", Package: "./services/control/cmd/vigilctl"}

// All are the services and vigilctl.
func All() []Binary { return append(append([]Binary{}, Services...), Vigilctl) }
