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
	// tls is the server's TLS (the copies in its directory); nil: plain
	// TCP. caFile is Options.TLS.CAFile, which the URLs verify with.
	tls    *TLSFiles
	caFile string
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
	var tlsFiles *TLSFiles
	if opts.TLS != nil {
		if tlsFiles, err = copyPostgresTLS(dir, *opts.TLS); err != nil {
			return nil, err
		}
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
		return startPostgresOn(ctx, binDir, dir, port, cred, opts.Persist, tlsFiles, clientCA(opts.TLS))
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

func startPostgresOn(ctx context.Context, binDir, dir string, port int, cred *syscall.Credential, persist bool, tlsFiles *TLSFiles, caFile string) (*Postgres, error) {
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
	args = append(args, postgresTLSArgs(tlsFiles)...)
	// Scratch data: no fsync (nothing here must survive a crash of the
	// machine). Commits still write their WAL before they return
	// (synchronous_commit stays on), so a SIGKILL of PostgreSQL, which the
	// HA tests do, loses no acknowledged transaction, as in production;
	// with it off the last ~200 ms of commits vanished and the
	// command_log projector's acknowledged upserts with them.
	if !persist {
		args = append(args,
			"-c", "fsync=off",
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
	p := &Postgres{proc: proc, port: port, tls: tlsFiles, caFile: caFile}
	adminURL := p.adminURL("postgres")
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

// DatabaseURL is the URL of database name on this server: with
// sslmode=disable, or with Options.TLS sslmode=verify-full and
// sslrootcert the TLS.CAFile (taken to sign the server's certificate too,
// as GenerateTLS's CA does; sslmode=require without a CAFile).
func (p *Postgres) DatabaseURL(name string) string {
	q := url.Values{"sslmode": {"disable"}}
	switch {
	case p.tls != nil && p.caFile != "":
		q = url.Values{"sslmode": {"verify-full"}, "sslrootcert": {p.caFile}}
	case p.tls != nil:
		q = url.Values{"sslmode": {"require"}}
	}
	return p.urlWith(name, q)
}

// adminURL is the URL the start-up checks use: TLS unverified (sslmode
// require) with Options.TLS, as the server takes nothing else.
func (p *Postgres) adminURL(name string) string {
	if p.tls == nil {
		return p.DatabaseURL(name)
	}
	return p.urlWith(name, url.Values{"sslmode": {"require"}})
}

func (p *Postgres) urlWith(name string, q url.Values) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(PostgresUser),
		Host:     net.JoinHostPort(loopback, strconv.Itoa(p.port)),
		Path:     "/" + name,
		RawQuery: q.Encode(),
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

// Kill ends the server and every backend with SIGKILL, as a crash of its
// host would (the next start runs crash recovery), and waits for the
// postmaster to exit.
func (p *Postgres) Kill() error {
	return p.proc.killGroup()
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

// postgresTLSDir is where StartPostgres copies the TLS files (owned by
// the server's user, the key 0600, as PostgreSQL demands).
const postgresTLSDir = "tls"

// copyPostgresTLS copies files into dir/tls, writes a pg_hba.conf that
// takes TCP connections over TLS only, and returns the copies' paths.
func copyPostgresTLS(dir string, files TLSFiles) (*TLSFiles, error) {
	tlsDir := filepath.Join(dir, postgresTLSDir)
	if err := ensureDir(tlsDir, 0o700); err != nil {
		return nil, err
	}
	copied := &TLSFiles{
		CertFile: filepath.Join(tlsDir, "server.pem"),
		KeyFile:  filepath.Join(tlsDir, "server-key.pem"),
	}
	pairs := [][2]string{{files.CertFile, copied.CertFile}, {files.KeyFile, copied.KeyFile}}
	if files.CAFile != "" {
		copied.CAFile = filepath.Join(tlsDir, "ca.pem")
		pairs = append(pairs, [2]string{files.CAFile, copied.CAFile})
	}
	for _, p := range pairs {
		b, err := os.ReadFile(p[0])
		if err != nil {
			return nil, fmt.Errorf("%w: TLS: %w", ErrInvalidOptions, err)
		}
		if err := os.WriteFile(p[1], b, 0o600); err != nil {
			return nil, fmt.Errorf("localstack: postgres TLS: %w", err)
		}
	}
	hba := "# localstack: TLS only over TCP\nlocal all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"
	if err := os.WriteFile(filepath.Join(tlsDir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return nil, fmt.Errorf("localstack: postgres TLS: %w", err)
	}
	return copied, nil
}

// postgresTLSArgs are the server's settings for its TLS files (none for
// nil): ssl on, client certificates verified when sent if there is a CA,
// and the pg_hba.conf of copyPostgresTLS.
func postgresTLSArgs(files *TLSFiles) []string {
	if files == nil {
		return nil
	}
	args := []string{"-c", "ssl=on", "-c", "ssl_cert_file=" + files.CertFile, "-c", "ssl_key_file=" + files.KeyFile,
		"-c", "hba_file=" + filepath.Join(filepath.Dir(files.CertFile), "pg_hba.conf")}
	if files.CAFile != "" {
		args = append(args, "-c", "ssl_ca_file="+files.CAFile)
	}
	return args
}

// clientCA is the CA file of files, if any.
func clientCA(files *TLSFiles) string {
	if files == nil {
		return ""
	}
	return files.CAFile
}
