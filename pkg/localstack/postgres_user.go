package localstack

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// postgresRunAsUsers are the unprivileged users PostgreSQL runs as when the
// caller is root, in order of preference; the last one is created when none
// exists.
var postgresRunAsUsers = []string{"postgres", "vigil-postgres"}

// postgresCredential returns the user PostgreSQL must run as: nil (the
// caller itself) unless the caller is root, in which case an unprivileged
// system user, created with useradd if needed.
func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range postgresRunAsUsers {
		if cred, err := lookupCredential(name); err == nil {
			return cred, nil
		}
	}
	name := postgresRunAsUsers[len(postgresRunAsUsers)-1]
	out, addErr := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
		"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
	// Another process may have created the user meanwhile: look it up again
	// whatever useradd said.
	cred, err := lookupCredential(name)
	if err != nil {
		return nil, fmt.Errorf("%w: running as root, postgres needs one of the users %s; useradd %s: %v %s",
			ErrUnprivilegedUser, strings.Join(postgresRunAsUsers, ", "), name, addErr, strings.TrimSpace(string(out)))
	}
	return cred, nil
}

func lookupCredential(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, err
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: gid %q: %w", name, u.Gid, err)
	}
	// An empty Groups clears the supplementary groups inherited from root.
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// preparePostgresDir creates dir and, when PostgreSQL runs as another user
// (cred not nil), hands dir to that user and makes sure it can reach it.
func preparePostgresDir(dir string, cred *syscall.Credential) error {
	if err := ensureDir(dir, 0o700); err != nil {
		return err
	}
	if cred == nil {
		return nil
	}
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("localstack: resolve %s: %w", dir, err)
	}
	if err := makeReachable(dir, cred); err != nil {
		return err
	}
	err = filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(cred.Uid), int(cred.Gid))
	})
	if err != nil {
		return fmt.Errorf("localstack: give %s to uid %d: %w", dir, cred.Uid, err)
	}
	return nil
}

// makeReachable checks that the user of cred may search every parent of
// dir. A parent inside os.TempDir() that it may not search gets the search
// bit for others; any other such parent is an error.
func makeReachable(dir string, cred *syscall.Credential) error {
	tempDir, err := filepath.EvalSymlinks(os.TempDir())
	if err != nil {
		tempDir = os.TempDir()
	}
	for parent := filepath.Dir(dir); ; parent = filepath.Dir(parent) {
		info, err := os.Stat(parent)
		if err != nil {
			return fmt.Errorf("localstack: stat %s: %w", parent, err)
		}
		if !canSearch(info, cred) {
			if !isInside(parent, tempDir) {
				return fmt.Errorf("%w: postgres runs as uid %d, which cannot enter %s (mode %v); put Dir elsewhere or grant search permission (chmod o+x %s)",
					ErrDirNotReachable, cred.Uid, parent, info.Mode().Perm(), parent)
			}
			if err := os.Chmod(parent, info.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("%w: chmod o+x %s: %w", ErrDirNotReachable, parent, err)
			}
		}
		if parent == filepath.Dir(parent) {
			return nil
		}
	}
}

// canSearch reports whether the user of cred (with no supplementary groups)
// may search the directory described by info.
func canSearch(info fs.FileInfo, cred *syscall.Credential) bool {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	mode := info.Mode().Perm()
	switch {
	case st.Uid == cred.Uid:
		return mode&0o100 != 0
	case st.Gid == cred.Gid:
		return mode&0o010 != 0
	default:
		return mode&0o001 != 0
	}
}

// isInside reports whether path lies strictly inside root.
func isInside(path, root string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}
