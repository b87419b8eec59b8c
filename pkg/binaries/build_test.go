package binaries

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"vigil.dev/pkg/localstack"
)

// TestWarmBuildLinksNothing builds vigilctl twice into one directory:
// the second build finds the staged binary up to date and leaves it as
// it was (the same file, hard-linked under its name).
func TestWarmBuildLinksNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds vigilctl")
	}
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	inode := func(path string) uint64 {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	if err := Build(ctx, root, dir, []Binary{Vigilctl}); err != nil {
		t.Fatal(err)
	}
	staged, named := inode(filepath.Join(dir, ".staged", "vigilctl")), inode(filepath.Join(dir, "vigilctl"))
	if staged != named {
		t.Fatalf("vigilctl is not a link to the staged binary (inodes %d, %d)", named, staged)
	}
	if err := Build(ctx, root, dir, []Binary{Vigilctl}); err != nil {
		t.Fatal(err)
	}
	if again := inode(filepath.Join(dir, ".staged", "vigilctl")); again != staged {
		t.Errorf("the warm build rewrote the staged binary (inode %d, was %d)", again, staged)
	}
	if again := inode(filepath.Join(dir, "vigilctl")); again != staged {
		t.Errorf("vigilctl is not the staged binary after the warm build (inode %d, want %d)", again, staged)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(left) > 0 {
		t.Errorf("temporary links left behind: %v", left)
	}
}

func TestBuildNamesTheFailure(t *testing.T) {
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	err = Build(context.Background(), root, t.TempDir(), []Binary{{Name: "nothing", Package: "./services/nothing"}})
	if err == nil {
		t.Fatal("built a package that does not exist")
	}
	if !errors.Is(err, ErrBuild) {
		t.Errorf("error %v is not ErrBuild", err)
	}
}
