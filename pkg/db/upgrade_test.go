package db_test

import (
	"encoding/json"
	"io/fs"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"

	"vigil.dev/pkg/db"
	"vigil.dev/pkg/testenv"
)

// firstUnderTheRule is the first migration written under the rule of
// docs/deploy.md "Rolling upgrades" (a migration keeps the previous
// release working: additive only). 00004 moved the command queue to
// JetStream, dropping the previous release's functions and changing a
// primary key: crossing it took every vigil-control instance down.
const firstUnderTheRule = 5

// notAdditive match statements that break the previous release's queries.
var notAdditive = []*regexp.Regexp{
	regexp.MustCompile(`(?i)\bDROP\b`),
	regexp.MustCompile(`(?i)\bRENAME\b`),
	regexp.MustCompile(`(?i)\bTRUNCATE\b`),
	regexp.MustCompile(`(?i)\bALTER\s+COLUMN\s+\w+\s+(SET\s+DATA\s+)?TYPE\b`),
	regexp.MustCompile(`(?i)\bSET\s+NOT\s+NULL\b`),
	regexp.MustCompile(`(?i)\bADD\s+(CONSTRAINT|PRIMARY\s+KEY|UNIQUE)\b`),
}

// addColumn matches one ADD COLUMN clause, up to the next comma or semicolon.
var addColumn = regexp.MustCompile(`(?i)\bADD\s+COLUMN\b[^,;]*`)

// migrationFiles are the embedded migrations by version.
func migrationFiles(t *testing.T) map[int]string {
	t.Helper()
	names, err := fs.Glob(db.Migrations(), "*.sql")
	if err != nil || len(names) == 0 {
		t.Fatalf("migrations: %v %v", names, err)
	}
	out := map[int]string{}
	for _, name := range names {
		v, err := strconv.Atoi(strings.SplitN(name, "_", 2)[0])
		if err != nil {
			t.Fatalf("%s: no version: %v", name, err)
		}
		out[v] = name
	}
	return out
}

// upSection is the Up part of a goose migration without SQL comments.
func upSection(sql string) string {
	up, _, _ := strings.Cut(sql, "-- +goose Down")
	var b strings.Builder
	for _, line := range strings.Split(up, "\n") {
		code, _, _ := strings.Cut(line, "--")
		b.WriteString(code + "\n")
	}
	return b.String()
}

// TestMigrationsAreAdditive: every migration from firstUnderTheRule on
// only adds (tables, indexes, nullable columns or columns with a
// default, functions): no drop, rename, type change, new constraint or
// NOT NULL column without a default, which would break the queries of
// the release before it while both run during a rolling upgrade.
func TestMigrationsAreAdditive(t *testing.T) {
	for v, name := range migrationFiles(t) {
		if v < firstUnderTheRule {
			continue
		}
		raw, err := fs.ReadFile(db.Migrations(), name)
		if err != nil {
			t.Fatal(err)
		}
		up := upSection(string(raw))
		for _, re := range notAdditive {
			if m := re.FindString(up); m != "" {
				t.Errorf("%s is not additive: %q (docs/deploy.md \"Rolling upgrades\")", name, m)
			}
		}
		for _, clause := range addColumn.FindAllString(up, -1) {
			if regexp.MustCompile(`(?i)\bNOT\s+NULL\b`).MatchString(clause) && !regexp.MustCompile(`(?i)\bDEFAULT\b`).MatchString(clause) {
				t.Errorf("%s adds a NOT NULL column without a default: %q", name, strings.TrimSpace(clause))
			}
		}
	}
}

// TestPreviousReleaseRunsOnTheNewSchema: for each migration under the
// rule, a database migrated by the release that brought it is used by
// the release before it (its embedded set lacks the migration): that
// release's Migrate, which every vigil-control instance runs at start,
// succeeds and changes nothing, and its queries of users work.
func TestPreviousReleaseRunsOnTheNewSchema(t *testing.T) {
	files := migrationFiles(t)
	all := db.Migrations()
	for v := range files {
		if v < firstUnderTheRule {
			continue
		}
		t.Run(files[v], func(t *testing.T) {
			ctx := testContext(t)
			pool := newPool(t, testenv.EmptyPostgres(t))
			upTo := func(last int) fstest.MapFS {
				out := fstest.MapFS{}
				for w, name := range files {
					if w <= last {
						raw, err := fs.ReadFile(all, name)
						if err != nil {
							t.Fatal(err)
						}
						out[name] = &fstest.MapFile{Data: raw}
					}
				}
				return out
			}
			if err := db.MigrateFS(ctx, pool, upTo(v)); err != nil {
				t.Fatalf("the release with %s: %v", files[v], err)
			}
			var before int
			if err := pool.QueryRow(ctx, `SELECT max(version_id) FROM goose_db_version`).Scan(&before); err != nil {
				t.Fatal(err)
			}
			if err := db.MigrateFS(ctx, pool, upTo(v-1)); err != nil {
				t.Fatalf("the release before %s does not start on its schema: %v", files[v], err)
			}
			var after int
			if err := pool.QueryRow(ctx, `SELECT max(version_id) FROM goose_db_version`).Scan(&after); err != nil || after != before {
				t.Errorf("schema version %d after the previous release's Migrate, want %d (%v)", after, before, err)
			}
			users := db.NewUsers(pool)
			if _, _, err := users.SeedUser(ctx, "test", "upgrade", json.RawMessage(`{}`), "coinbase"); err != nil {
				t.Fatalf("seed: %v", err)
			}
			if _, err := users.UserByToken(ctx, "upgrade"); err != nil {
				t.Errorf("lookup: %v", err)
			}
		})
	}
}
