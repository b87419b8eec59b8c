package localstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// PostgresUser is the superuser of every cluster StartPostgres creates; it
// authenticates with trust on the loopback address.
const PostgresUser = "vigil"

// PostgresDatabase is the database StartPostgres creates when missing and
// Postgres.URL points at.
const PostgresDatabase = "vigil"

// maxSocketPath is the longest Unix socket path Linux accepts (sun_path is
// 108 bytes including the terminating NUL).
const maxSocketPath = 107

// Postgres is a private PostgreSQL cluster started by StartPostgres.
type Postgres struct {
	proc *process
	port int
}

// StartPostgres runs a private PostgreSQL cluster on 127.0.0.1 with its data
// in opts.Dir/data. It creates the cluster with initdb (superuser "vigil",
// trust authentication) only when opts.Dir has none yet, so a second start
// reuses the data. It waits until the server accepts connections and
// creates the database "vigil" if missing.
func StartPostgres(ctx context.Context, opts Options) (*Postgres, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	binDir, err := findPostgresBinDir()
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("%w: Dir %q: %w", ErrInvalidOptions, opts.Dir, err)
	}
	cred, err := postgresCredential()
	if err != nil {
		return nil, err
	}
	if err := preparePostgresDir(dir, cred); err != nil {
		return nil, err
	}
	ctx, cancel := withStartDeadline(ctx)
	defer cancel()
	if err := initCluster(ctx, binDir, dir, cred, opts.Persist); err != nil {
		return nil, err
	}
	return startOnPort(opts, func(port int) (*Postgres, error) {
		return startPostgresOn(ctx, binDir, dir, port, cred, opts.Persist)
	})
}

// initCluster runs initdb unless dir/data already holds a cluster.
func initCluster(ctx context.Context, binDir, dir string, cred *syscall.Credential, persist bool) error {
	dataDir := filepath.Join(dir, "data")
	if _, err := os.Stat(filepath.Join(dataDir, "PG_VERSION")); err == nil {
		return nil
	}
	args := []string{
		"-D", dataDir,
		"-U", PostgresUser,
		"--auth=trust",
		"--encoding=UTF8",
		"--locale=C",
	}
	if !persist {
		args = append(args, "--no-sync")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"), args...)
	cmd.Dir = dir
	logPath := filepath.Join(dir, "initdb.log")
	proc, err := startProcess("initdb", cmd, logPath, syscall.SIGKILL, cred)
	if err != nil {
		return err
	}
	<-proc.exited
	if proc.waitErr != nil {
		return fmt.Errorf("localstack: initdb %s: %w; log %s:\n%s", dataDir, proc.waitErr, logPath, proc.logTail())
	}
	return nil
}

func startPostgresOn(ctx context.Context, binDir, dir string, port int, cred *syscall.Credential, persist bool) (*Postgres, error) {
	socketDir := dir
	if len(socketDir)+len("/.s.PGSQL.")+len(strconv.Itoa(port)) > maxSocketPath {
		socketDir = "" // too long for a Unix socket: TCP only
	}
	args := []string{
		"-D", filepath.Join(dir, "data"),
		"-p", strconv.Itoa(port),
		"-k", socketDir,
		"-c", "listen_addresses=" + loopback,
		// Room for many pools: test packages open one per test, and every
		// service instance of a dev or test stack has its own.
		"-c", "max_connections=300",
	}
	if !persist {
		args = append(args,
			"-c", "fsync=off",
			"-c", "synchronous_commit=off",
			"-c", "full_page_writes=off",
		)
	}
	cmd := exec.Command(filepath.Join(binDir, "postgres"), args...)
	cmd.Dir = dir
	// SIGINT is PostgreSQL's fast shutdown.
	proc, err := startProcess("postgres", cmd, filepath.Join(dir, "postgres.log"), syscall.SIGINT, cred)
	if err != nil {
		return nil, err
	}
	p := &Postgres{proc: proc, port: port}
	adminURL := p.DatabaseURL("postgres")
	err = proc.waitReady(ctx, func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, adminURL)
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
	if err == nil {
		err = createDatabase(ctx, adminURL, PostgresDatabase)
	}
	if err != nil {
		_ = proc.stop(syscall.SIGQUIT)
		return nil, err
	}
	return p, nil
}

// createDatabase creates database name unless it exists.
func createDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("localstack: connect to create database %q: %w", name, err)
	}
	defer conn.Close(ctx)
	var exists bool
	err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists)
	if err != nil {
		return fmt.Errorf("localstack: look up database %q: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: created meanwhile
		return nil
	}
	if err != nil {
		return fmt.Errorf("localstack: create database %q: %w", name, err)
	}
	return nil
}

// Port is the server's TCP port.
func (p *Postgres) Port() int { return p.port }

// URL is the URL of the database "vigil",
// postgres://vigil@127.0.0.1:<port>/vigil?sslmode=disable.
func (p *Postgres) URL() string {
	return p.DatabaseURL(PostgresDatabase)
}

// DatabaseURL is the URL of database name on this server.
func (p *Postgres) DatabaseURL(name string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(PostgresUser),
		Host:     net.JoinHostPort(loopback, strconv.Itoa(p.port)),
		Path:     "/" + name,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// LogPath is the file the server writes its log to.
func (p *Postgres) LogPath() string {
	return p.proc.logPath
}

// Stop shuts the server down with a fast shutdown (SIGINT, as
// `pg_ctl stop -m fast`): open sessions are ended, data is checkpointed.
func (p *Postgres) Stop() error {
	return p.proc.stop(syscall.SIGINT)
}

// postgresBinRoot holds the Debian packages' per-version bin directories.
const postgresBinRoot = "/usr/lib/postgresql"

// findPostgresBinDir returns a directory holding both initdb and postgres:
// the one of initdb on PATH, else the highest version under
// /usr/lib/postgresql.
func findPostgresBinDir() (string, error) {
	var candidates []string
	if initdb, err := exec.LookPath("initdb"); err == nil {
		if resolved, err := filepath.EvalSymlinks(initdb); err == nil {
			candidates = append(candidates, filepath.Dir(resolved))
		}
		candidates = append(candidates, filepath.Dir(initdb))
	}
	versioned, _ := filepath.Glob(filepath.Join(postgresBinRoot, "*", "bin"))
	slices.SortFunc(versioned, func(a, b string) int {
		return majorVersion(b) - majorVersion(a)
	})
	candidates = append(candidates, versioned...)
	for _, dir := range candidates {
		if isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w: PostgreSQL server (initdb, postgres) is not on PATH nor in %s/*/bin: %s postgresql",
		ErrMissingBinary, postgresBinRoot, installHint)
}

// majorVersion reads the version directory of a /usr/lib/postgresql/<v>/bin
// path; unparsable versions sort last.
func majorVersion(binDir string) int {
	v := filepath.Base(filepath.Dir(binDir))
	major, err := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
	if err != nil {
		return -1
	}
	return major
}

func isExecutable(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.Mode().IsRegular() && info.Mode()&0o111 != 0
}
