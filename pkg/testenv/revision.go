package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"vigil.dev/pkg/binaries"
	"vigil.dev/pkg/localstack"
)

var revisionBuilds struct {
	mu   sync.Mutex
	dirs map[string]string
}

// BuildRevision builds the binaries of binaries.All as they were at git
// revision rev (a commit name git understands) and returns their
// directory, for tests that run two versions side by side (the rolling
// upgrade test). The sources come from git archive (the repository and
// its worktrees are not touched) into <repo>/.run/revisions/<commit>/src;
// the binaries land in .../bin and are reused by later runs as they are,
// so only the first run pays for the build (minutes on a loaded 2-core
// machine; the module and build caches are the usual ones). Each binary
// reports the commit's short name as its micro "revision" metadata.
func BuildRevision(t testing.TB, rev string) string {
	t.Helper()
	revisionBuilds.mu.Lock()
	defer revisionBuilds.mu.Unlock()
	if dir, ok := revisionBuilds.dirs[rev]; ok {
		return dir
	}
	dir, err := buildRevision(rev)
	if err != nil {
		t.Fatalf("testenv: revision %s: %v", rev, err)
	}
	if revisionBuilds.dirs == nil {
		revisionBuilds.dirs = map[string]string{}
	}
	revisionBuilds.dirs[rev] = dir
	return dir
}

// buildRevision is BuildRevision without the test.
func buildRevision(rev string) (string, error) {
	root, err := localstack.RepoRoot()
	if err != nil {
		return "", err
	}
	commit, err := gitOutput(root, "rev-parse", "--verify", rev+"^{commit}")
	if err != nil {
		return "", err
	}
	base := filepath.Join(root, ".run", "revisions", commit)
	bin, src := filepath.Join(base, "bin"), filepath.Join(base, "src")
	if built(bin) {
		return bin, nil
	}
	if err := os.RemoveAll(base); err != nil {
		return "", err
	}
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	archive := exec.Command("sh", "-c", `git archive --format=tar "$1" | tar -x -C "$2"`, "sh", commit, src)
	archive.Dir = root
	if out, err := archive.CombinedOutput(); err != nil {
		return "", fmt.Errorf("git archive %s: %v\n%s", commit, err, out)
	}
	var bins []binaries.Binary
	for _, b := range binaries.All() {
		// A binary the revision did not have yet is left out.
		if _, err := os.Stat(filepath.Join(src, b.Package, "main.go")); err == nil {
			bins = append(bins, b)
		}
	}
	if err := binaries.Build(context.Background(), src, bin+".partial", bins, "-p", "2", "-buildvcs=false",
		"-ldflags", "-X vigil.dev/pkg/service.Revision="+commit[:7]); err != nil {
		return "", fmt.Errorf("at %s: %w", commit[:7], err)
	}
	if err := os.Rename(bin+".partial", bin); err != nil {
		return "", err
	}
	return bin, nil
}

// built reports whether dir holds a finished build (it is renamed into
// place only once every binary is there).
func built(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "vigil-control"))
	return err == nil
}

// gitOutput runs git in dir and returns its trimmed output.
func gitOutput(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		return "", fmt.Errorf("git %s: %v %s", strings.Join(args, " "), err, stderr)
	}
	return strings.TrimSpace(string(out)), nil
}
