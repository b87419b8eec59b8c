package main

import (
	"os"
	"path/filepath"
	"testing"

	"vigil.dev/pkg/contract"
)

// TestDemoSettingsAreValid keeps deploy/dev/demo-settings.json (seeded by
// make run) valid under the contract, with rules for every mode.
func TestDemoSettingsAreValid(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "dev", "demo-settings.json"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := contract.ParseSettings(doc, contract.DefaultLimits)
	if err != nil {
		t.Fatalf("demo settings: %v", err)
	}
	for _, m := range contract.Modes {
		if len(s.RulesFor(m)) == 0 {
			t.Errorf("demo settings have no rules for %s", m)
		}
	}
}
