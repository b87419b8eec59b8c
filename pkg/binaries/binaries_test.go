package binaries_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"vigil.dev/pkg/binaries"
)

// TestEveryBinaryHasItsMainPackage: each listed package exists in the
// repository and is a main package.
func TestEveryBinaryHasItsMainPackage(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range binaries.All() {
		main, err := os.ReadFile(filepath.Join(root, b.Package, "main.go"))
		if err != nil {
			t.Errorf("%s: %v", b.Name, err)
			continue
		}
		if !slices.Contains(strings.Split(string(main), "\n"), "package main") {
			t.Errorf("%s: %s/main.go is not package main", b.Name, b.Package)
		}
	}
	if got := binaries.Services[0].Short(); got != "feed" {
		t.Errorf("Short() = %q, want feed", got)
	}
}
