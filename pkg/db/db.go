// Package db is vigil's PostgreSQL layer: a traced connection pool, the
// embedded schema migrations, and the typed queries the services share.
//
// Migrations are SQL files embedded from migrations/ and applied with goose
// under a PostgreSQL session advisory lock, so several processes may call
// Migrate at the same time: one applies, the others wait and find nothing
// left to do.
package db

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
)

// Errors of this package, wrapped with details.
var (
	// ErrBadURL reports a DATABASE_URL that cannot be parsed.
	ErrBadURL = errors.New("db: bad database URL")
	// ErrUnreachable reports a database that does not answer.
	ErrUnreachable = contract.NewKind(contract.ErrUnavailable, "db: database unreachable")
	// ErrMigrate reports a failed schema migration.
	ErrMigrate = errors.New("db: migration failed")
	// ErrUnknownUser reports a user token that names no user.
	ErrUnknownUser = contract.NewKind(contract.ErrUnknownUser, "db: unknown user")
	// ErrAmbiguousToken reports a user token that names users of several
	// identity providers.
	ErrAmbiguousToken = contract.NewKind(contract.ErrConflict, "db: user token names several users")
	// ErrNoExchangeAccount reports a user without an exchange account.
	ErrNoExchangeAccount = contract.NewKind(contract.ErrConflict, "db: user has no exchange account")
	// ErrInvalidInput reports an argument that cannot be stored.
	ErrInvalidInput = errors.New("db: invalid input")
)

//go:embed migrations/*.sql
var embeddedMigrations embed.FS

// migrationLockTimeout bounds how long Migrate waits for another process's
// migration to finish: the lock is probed every second this many times.
const migrationLockTimeout = 120

// NewPool connects to the database at url (a postgres:// URL or key=value
// DSN), traces every query with OpenTelemetry (otelpgx, through the global
// tracer provider) and checks that the database answers.
func NewPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	pool, err := OpenPool(url)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		cfg := pool.Config()
		pool.Close()
		return nil, fmt.Errorf("%w: %s@%s:%d/%s: %w", ErrUnreachable,
			cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	return pool, nil
}

// OpenPool is NewPool without the check: the pool connects when first
// used, so a service whose Postgres work can wait (a projection that
// catches up) starts while the database is down.
func OpenPool(url string) (*pgxpool.Pool, error) {
	return Open(config.Postgres{URL: url})
}

// Open is OpenPool of a service's configuration: DATABASE_URL and
// DATABASE_PASSWORD_FILE. Every new connection of the pool reads the
// files again: the TLS files of the URL (sslrootcert, sslcert, sslkey,
// which pgx loads when it parses the URL), its passfile and the password
// file, so that rotated certificates and passwords are used without a
// restart (existing connections keep what they were opened with).
func Open(pc config.Postgres) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(pc.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadURL, err)
	}
	cfg.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
		return refreshConnConfig(cc, pc)
	}
	cfg.ConnConfig.Tracer = otelpgx.NewTracer()
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadURL, err)
	}
	return pool, nil
}

// refreshConnConfig sets the TLS configurations and the password of a
// new connection from the files as they are now.
func refreshConnConfig(cc *pgx.ConnConfig, pc config.Postgres) error {
	fresh, err := pgconn.ParseConfig(pc.URL)
	if err != nil {
		return fmt.Errorf("%w: DATABASE_URL: %w", ErrBadURL, err)
	}
	cc.TLSConfig = fresh.TLSConfig
	cc.Fallbacks = fresh.Fallbacks
	cc.Password = fresh.Password
	if pc.PasswordFile != "" {
		password, err := config.ReadSecretFile("DATABASE_PASSWORD_FILE", pc.PasswordFile)
		if err != nil {
			return err
		}
		cc.Password = password
	}
	return nil
}

// Migrate brings the schema of the pool's database up to the newest
// embedded migration. It is a no-op when the schema is current, and safe
// to call from several processes at once.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	migrations, err := fs.Sub(embeddedMigrations, "migrations")
	if err != nil {
		return fmt.Errorf("%w: embedded migrations: %w", ErrMigrate, err)
	}
	return migrate(ctx, pool, migrations)
}

// migrate applies the migrations of fsys (the rolling-upgrade test gives
// it an older release's set).
func migrate(ctx context.Context, pool *pgxpool.Pool, migrations fs.FS) error {
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, migrationLockTimeout))
	if err != nil {
		return fmt.Errorf("%w: session locker: %w", ErrMigrate, err)
	}
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer sqlDB.Close()
	provider, err := goose.NewProvider(goose.DialectPostgres, sqlDB, migrations,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMigrate, err)
	}
	if _, err := provider.Up(ctx); err != nil {
		return fmt.Errorf("%w: %w", ErrMigrate, err)
	}
	return nil
}
