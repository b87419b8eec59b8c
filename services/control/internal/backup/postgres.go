package backup

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// pgBinRoot holds the Debian packages' per-version PostgreSQL binaries.
const pgBinRoot = "/usr/lib/postgresql"

// restoredTables are the tables whose row counts Restore reports.
var restoredTables = []string{"users", "exchange_accounts", "command_log", "alert_events"}

// pgxOnlyParams are connection parameters pgx understands and libpq (so
// pg_dump) does not.
var pgxOnlyParams = []string{"statement_cache_capacity", "description_cache_capacity", "default_query_exec_mode"}

// pgTool finds a PostgreSQL client program: on PATH, else in the highest
// version under /usr/lib/postgresql.
func pgTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	dirs, _ := filepath.Glob(filepath.Join(pgBinRoot, "*", "bin"))
	slices.SortFunc(dirs, func(a, b string) int { return pgMajor(b) - pgMajor(a) })
	for _, dir := range dirs {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name), nil
		}
	}
	return "", fmt.Errorf("%w: %s is not on PATH nor in %s/*/bin: install the PostgreSQL client (apt-get install postgresql-client)", ErrPostgres, name, pgBinRoot)
}

// pgMajor is the version of a /usr/lib/postgresql/<v>/bin directory.
func pgMajor(binDir string) int {
	v, err := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	if err != nil {
		return -1
	}
	return v
}

// libpqURL is databaseURL for pg_dump and pg_restore: without pgx's own
// parameters, and without the password, which goes into PGPASSWORD
// instead of the process list.
func libpqURL(databaseURL string) (string, []string, error) {
	u, err := url.Parse(databaseURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", nil, fmt.Errorf("%w: DATABASE_URL must be a postgres:// URL", ErrInvalid)
	}
	var env []string
	if pw, ok := u.User.Password(); ok {
		env = append(env, "PGPASSWORD="+pw)
		u.User = url.User(u.User.Username())
	}
	q := u.Query()
	for k := range q {
		if strings.HasPrefix(k, "pool_") || slices.Contains(pgxOnlyParams, k) {
			q.Del(k)
		}
	}
	u.RawQuery = q.Encode()
	return u.String(), env, nil
}

// runPG runs a PostgreSQL client program against databaseURL.
func runPG(ctx context.Context, tool, databaseURL string, args ...string) error {
	bin, err := pgTool(tool)
	if err != nil {
		return err
	}
	conn, env, err := libpqURL(databaseURL)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, append(args, "--dbname="+conn)...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: %s: %w: %s", ErrPostgres, tool, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// dumpPostgres dumps the database into path (custom format: compressed,
// restored by pg_restore, tables in any order).
func dumpPostgres(ctx context.Context, databaseURL, path string) (PostgresEntry, error) {
	if err := runPG(ctx, "pg_dump", databaseURL, "--format=custom", "--no-owner", "--no-privileges", "--file="+path); err != nil {
		return PostgresEntry{}, err
	}
	info, err := os.Stat(path)
	if err != nil {
		return PostgresEntry{}, err
	}
	return PostgresEntry{File: filepath.Base(path), Bytes: info.Size()}, nil
}

// checkDumpFile checks that path is a pg_dump custom-format archive.
func checkDumpFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	defer f.Close()
	head := make([]byte, 5)
	if _, err := f.Read(head); err != nil || string(head) != "PGDMP" {
		return fmt.Errorf("%w: %s is not a pg_dump archive", ErrInvalid, path)
	}
	return nil
}

// checkEmptyDatabase refuses a database that holds users: a restore goes
// into an empty database, or one the services only migrated.
func checkEmptyDatabase(ctx context.Context, databaseURL string) error {
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("%w: connect: %w", ErrPostgres, err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('public.users') IS NOT NULL").Scan(&exists); err != nil {
		return fmt.Errorf("%w: %w", ErrPostgres, err)
	}
	if !exists {
		return nil
	}
	var users int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&users); err != nil {
		return fmt.Errorf("%w: %w", ErrPostgres, err)
	}
	if users > 0 {
		return fmt.Errorf("%w: the database already holds %d users: restore into an empty database", ErrExists, users)
	}
	return nil
}

// restorePostgres restores the dump at path in one transaction (all or
// nothing), replacing the tables a migration may already have created,
// and counts the rows of restoredTables.
func restorePostgres(ctx context.Context, databaseURL, path string) (map[string]int64, error) {
	if err := runPG(ctx, "pg_restore", databaseURL, "--clean", "--if-exists", "--no-owner", "--no-privileges",
		"--single-transaction", "--exit-on-error", path); err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return nil, fmt.Errorf("%w: connect: %w", ErrPostgres, err)
	}
	defer conn.Close(ctx)
	rows := map[string]int64{}
	for _, table := range restoredTables {
		var n int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{table}.Sanitize()).Scan(&n); err != nil {
			return nil, fmt.Errorf("%w: count %s: %w", ErrPostgres, table, err)
		}
		rows[table] = n
	}
	return rows, nil
}
