package db

import (
	"context"
	"io/fs"

	"github.com/jackc/pgx/v5/pgxpool"
)

// MigrateFS applies the migrations of fsys, for tests that play an older
// release.
func MigrateFS(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS) error {
	return migrate(ctx, pool, fsys)
}

// Migrations are the embedded migrations.
func Migrations() fs.FS {
	sub, err := fs.Sub(embeddedMigrations, "migrations")
	if err != nil {
		panic(err)
	}
	return sub
}
