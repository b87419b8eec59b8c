package localstack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrNoRepoRoot reports a working directory outside the vigil repository.
var ErrNoRepoRoot = errors.New("localstack: no go.work in the working directory or its parents")

// RepoRoot is the nearest directory up from the working directory that
// holds go.work: the root of the vigil repository, where the dev stack keeps
// .run/ and the binaries are built from.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("localstack: working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", ErrNoRepoRoot
		}
		dir = parent
	}
}
