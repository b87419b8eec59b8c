// Package directory resolves user tokens (identity_sub) to vigil users and
// their exchange accounts, with a cache: an entry is read from Postgres on
// first use, kept for a TTL, and refreshed on demand (reload-settings).
// Unknown tokens are never cached, so a new user works at once.
//
// Every user read from Postgres is also written to the KV bucket
// VIGIL_USERS (when it changed), replicated like the streams: while
// Postgres is down, Lookup answers from memory or from that bucket, so
// commands are accepted and run through an outage, even by an instance
// that started during it. Refresh (reload-settings) needs Postgres.
package directory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/natsx"
)

// ErrStore reports a database failure (not an unknown user).
var ErrStore = contract.NewKind(contract.ErrUnavailable, "directory: PostgreSQL (users) unavailable")

// User is a user with their exchange accounts.
type User struct {
	// ID is users.id.
	ID int64 `json:"id"`
	// Token is the identity_sub.
	Token string `json:"token"`
	// Settings is users.settings as stored.
	Settings json.RawMessage `json:"settings"`
	// Exchanges are the ids of the user's exchange accounts, oldest first;
	// the first is the default.
	Exchanges []int64 `json:"exchanges"`
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
	kv    jetstream.KeyValue
	ttl   time.Duration
	now   func() time.Time
	log   *slog.Logger

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	user    User
	fetched time.Time
}

// New returns a directory on pool whose entries live for ttl, kept also in
// kv (the VIGIL_USERS bucket; nil keeps them in memory only).
func New(pool *pgxpool.Pool, kv jetstream.KeyValue, ttl time.Duration, log *slog.Logger) *Directory {
	return &Directory{pool: pool, users: db.NewUsers(pool), kv: kv, ttl: ttl, now: time.Now, log: log, cache: map[string]cached{}}
}

// Lookup returns the user of token from the cache, or from Postgres when the
// entry is missing or older than the TTL. An unknown token wraps
// db.ErrUnknownUser. When Postgres is unavailable it answers from the
// memory cache whatever its age, else from VIGIL_USERS.
func (d *Directory) Lookup(ctx context.Context, token string) (User, error) {
	d.mu.Lock()
	c, ok := d.cache[token]
	d.mu.Unlock()
	if ok && d.now().Sub(c.fetched) < d.ttl {
		return c.user, nil
	}
	rctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	u, err := d.Refresh(rctx, token)
	cancel()
	if err == nil || !errors.Is(err, ErrStore) {
		return u, err
	}
	if !ok {
		if c.user, err = d.kept(ctx, token); err != nil {
			return User{}, fmt.Errorf("%w: %q is not cached either: %w", ErrStore, token, err)
		}
	}
	// Ask Postgres again in retryAfterOutage, not on every lookup.
	d.mu.Lock()
	d.cache[token] = cached{user: c.user, fetched: d.now().Add(retryAfterOutage - d.ttl)}
	d.mu.Unlock()
	return c.user, nil
}

// lookupTimeout bounds the Postgres read of a Lookup, which then answers
// from the caches.
const lookupTimeout = 2 * time.Second

// retryAfterOutage is how long a user served from the caches during a
// Postgres outage is kept before Postgres is asked again.
const retryAfterOutage = 5 * time.Second

// Refresh reads the user of token from Postgres and replaces the cache
// entry (and the VIGIL_USERS entry when it changed); an unknown token
// drops both. A database failure leaves the caches alone.
func (d *Directory) Refresh(ctx context.Context, token string) (User, error) {
	u, err := d.read(ctx, token)
	if errors.Is(err, ErrStore) {
		return User{}, err
	}
	d.mu.Lock()
	old, had := d.cache[token]
	if err != nil {
		delete(d.cache, token)
	} else {
		d.cache[token] = cached{user: u, fetched: d.now()}
	}
	d.mu.Unlock()
	if d.kv == nil {
		return u, err
	}
	switch {
	case err != nil:
		if kerr := d.kv.Delete(ctx, contract.StateKey(token)); kerr != nil && !errors.Is(kerr, jetstream.ErrKeyNotFound) {
			d.log.Warn("unknown user not removed from "+natsx.BucketUsers, "user", token, "err", kerr)
		}
		return User{}, err
	case !had || !sameUser(old.user, u):
		if b, merr := json.Marshal(u); merr == nil {
			if _, kerr := d.kv.Put(ctx, contract.StateKey(token), b); kerr != nil {
				d.log.Warn("user not cached in "+natsx.BucketUsers, "user", token, "err", kerr)
			}
		}
	}
	return u, nil
}

// sameUser reports whether a and b are the same user with the same
// settings and accounts.
func sameUser(a, b User) bool {
	return a.ID == b.ID && a.Token == b.Token && bytes.Equal(a.Settings, b.Settings) && slices.Equal(a.Exchanges, b.Exchanges)
}

// kept reads token's user from VIGIL_USERS.
func (d *Directory) kept(ctx context.Context, token string) (User, error) {
	if d.kv == nil {
		return User{}, jetstream.ErrKeyNotFound
	}
	e, err := d.kv.Get(ctx, contract.StateKey(token))
	if err != nil {
		return User{}, err
	}
	var u User
	if err := json.Unmarshal(e.Value(), &u); err != nil {
		return User{}, err
	}
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

// Tokens lists the tokens of every user (for seeding desired states):
// from Postgres, or from VIGIL_USERS while Postgres is unavailable.
func (d *Directory) Tokens(ctx context.Context) ([]string, error) {
	rows, err := d.pool.Query(ctx, `SELECT DISTINCT identity_sub FROM users ORDER BY identity_sub`)
	if err != nil && d.kv != nil {
		if keys, kerr := d.keptTokens(ctx); kerr == nil {
			return keys, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: list users: %w", ErrStore, err)
	}
	tokens, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("%w: list users: %w", ErrStore, err)
	}
	return tokens, nil
}

// keptTokens lists the users in VIGIL_USERS.
func (d *Directory) keptTokens(ctx context.Context) ([]string, error) {
	lister, err := d.kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var tokens []string
	for k := range lister.Keys() {
		if t, err := contract.UserFromStateKey(k); err == nil {
			tokens = append(tokens, t)
		}
	}
	slices.Sort(tokens)
	return tokens, nil
}
