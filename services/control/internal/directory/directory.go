// Package directory resolves user tokens (identity_sub) to vigil users and
// their exchange accounts, with a cache: an entry is read from Postgres on
// first use, kept for a TTL, and refreshed on demand (reload-settings).
// Unknown tokens are never cached, so a new user works at once.
package directory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
)

// ErrStore reports a database failure (not an unknown user).
var ErrStore = contract.NewKind(contract.ErrUnavailable, "directory: user store unavailable")

// User is a user with their exchange accounts.
type User struct {
	// ID is users.id.
	ID int64
	// Token is the identity_sub.
	Token string
	// Settings is users.settings as stored.
	Settings json.RawMessage
	// Exchanges are the ids of the user's exchange accounts, oldest first;
	// the first is the default.
	Exchanges []int64
}

// DefaultExchange is the user's first exchange account, 0 when none.
func (u User) DefaultExchange() int64 {
	if len(u.Exchanges) == 0 {
		return 0
	}
	return u.Exchanges[0]
}

// HasExchange reports whether id is one of the user's exchange accounts.
func (u User) HasExchange(id int64) bool { return slices.Contains(u.Exchanges, id) }

// Directory is the cached user lookup.
type Directory struct {
	pool  *pgxpool.Pool
	users *db.Users
	ttl   time.Duration
	now   func() time.Time

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	user    User
	fetched time.Time
}

// New returns a directory on pool whose entries live for ttl.
func New(pool *pgxpool.Pool, ttl time.Duration) *Directory {
	return &Directory{pool: pool, users: db.NewUsers(pool), ttl: ttl, now: time.Now, cache: map[string]cached{}}
}

// Lookup returns the user of token from the cache, or from Postgres when the
// entry is missing or older than the TTL. An unknown token wraps
// db.ErrUnknownUser.
func (d *Directory) Lookup(ctx context.Context, token string) (User, error) {
	d.mu.Lock()
	c, ok := d.cache[token]
	d.mu.Unlock()
	if ok && d.now().Sub(c.fetched) < d.ttl {
		return c.user, nil
	}
	return d.Refresh(ctx, token)
}

// Refresh reads the user of token from Postgres and replaces the cache
// entry; an unknown token drops it.
func (d *Directory) Refresh(ctx context.Context, token string) (User, error) {
	u, err := d.read(ctx, token)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		delete(d.cache, token)
		return User{}, err
	}
	d.cache[token] = cached{user: u, fetched: d.now()}
	return u, nil
}

func (d *Directory) read(ctx context.Context, token string) (User, error) {
	row, err := d.users.UserByToken(ctx, token)
	if errors.Is(err, db.ErrUnknownUser) || errors.Is(err, db.ErrAmbiguousToken) {
		return User{}, err
	}
	if err != nil {
		return User{}, fmt.Errorf("%w: %w", ErrStore, err)
	}
	u := User{ID: row.ID, Token: row.Token, Settings: row.Settings}
	rows, err := d.pool.Query(ctx, `SELECT id FROM exchange_accounts WHERE user_id = $1 ORDER BY id`, u.ID)
	if err != nil {
		return User{}, fmt.Errorf("%w: exchange accounts of %q: %w", ErrStore, token, err)
	}
	if u.Exchanges, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
		return User{}, fmt.Errorf("%w: exchange accounts of %q: %w", ErrStore, token, err)
	}
	return u, nil
}

// Tokens lists the tokens of every user (for seeding desired states).
func (d *Directory) Tokens(ctx context.Context) ([]string, error) {
	rows, err := d.pool.Query(ctx, `SELECT DISTINCT identity_sub FROM users ORDER BY identity_sub`)
	if err != nil {
		return nil, fmt.Errorf("%w: list users: %w", ErrStore, err)
	}
	tokens, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("%w: list users: %w", ErrStore, err)
	}
	return tokens, nil
}
