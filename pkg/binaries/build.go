package binaries

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
)

// ErrBuild reports a binary that does not compile.
var ErrBuild = errors.New("binaries: build failed")

// Build builds bins from the module tree at root into dir with one go
// build (which compiles their shared packages once and links them in
// parallel), flags added to go build (-ldflags, -overlay, ...). go build
// writes into dir/.staged, each named by its package's last element
// (feed, ..., vigilctl); Build then makes dir/<Name> a
// hard link to each. The staged binaries stay, so that the next Build
// finds them up to date and links nothing: a warm build costs only go's
// up-to-date check.
func Build(ctx context.Context, root, dir string, bins []Binary, flags ...string) error {
	staging := filepath.Join(dir, ".staged")
	if err := os.MkdirAll(staging, 0o755); err != nil {
		return fmt.Errorf("binaries: %w", err)
	}
	args := append(append([]string{"build"}, flags...), "-o", staging+string(filepath.Separator))
	for _, b := range bins {
		args = append(args, b.Package)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: go %v: %w\n%s", ErrBuild, args, err, out.String())
	}
	for _, b := range bins {
		if err := replaceWithLink(filepath.Join(staging, path.Base(b.Package)), filepath.Join(dir, b.Name)); err != nil {
			return err
		}
	}
	return nil
}

// replaceWithLink makes dst a hard link to staged (a copy where links
// are not possible), replacing what was there at once (a process running
// the old file keeps it); a dst that is staged already stays (renaming
// a link onto its own file would leave the temporary name behind). The
// temporary name is the process's own, so that test processes building
// into one directory do not collide.
func replaceWithLink(staged, dst string) error {
	if sameFile(staged, dst) {
		return nil
	}
	tmp := fmt.Sprintf("%s.%d.tmp", dst, os.Getpid())
	_ = os.Remove(tmp)
	if err := os.Link(staged, tmp); err != nil {
		if err := copyFile(staged, tmp); err != nil {
			return fmt.Errorf("binaries: %w", err)
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("binaries: %w", err)
	}
	return nil
}

// sameFile reports whether a and b are one file.
func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// copyFile copies an executable file.
func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o755)
}
