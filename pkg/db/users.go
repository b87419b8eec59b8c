package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// User is a row of the users table.
type User struct {
	// ID is users.id, the {userId} of Redis keys.
	ID int64
	// Token is the identity_sub, the <user> of NATS subjects.
	Token string
	// Provider is the identity_provider.
	Provider string
	// Settings is the user's settings document, as stored.
	Settings json.RawMessage
}

// Users reads and writes users and their exchange accounts.
type Users struct {
	pool *pgxpool.Pool
}

// NewUsers returns a Users store on pool.
func NewUsers(pool *pgxpool.Pool) *Users {
	return &Users{pool: pool}
}

// UserByToken returns the user whose identity_sub is token. It returns
// ErrUnknownUser when there is none, and ErrAmbiguousToken when users of
// several identity providers share it.
func (u *Users) UserByToken(ctx context.Context, token string) (User, error) {
	rows, err := u.pool.Query(ctx, `
		SELECT id, identity_sub, identity_provider, settings
		FROM users WHERE identity_sub = $1
		ORDER BY id LIMIT 2`, token)
	if err != nil {
		return User{}, fmt.Errorf("db: look up user %q: %w", token, err)
	}
	users, err := pgx.CollectRows(rows, pgx.RowToStructByPos[User])
	if err != nil {
		return User{}, fmt.Errorf("db: look up user %q: %w", token, err)
	}
	switch len(users) {
	case 0:
		return User{}, fmt.Errorf("%w: %q", ErrUnknownUser, token)
	case 1:
		return users[0], nil
	default:
		return User{}, fmt.Errorf("%w: %q", ErrAmbiguousToken, token)
	}
}

// DefaultExchangeAccount returns the id of the user's first exchange
// account, or ErrNoExchangeAccount.
func (u *Users) DefaultExchangeAccount(ctx context.Context, userID int64) (int64, error) {
	var id int64
	err := u.pool.QueryRow(ctx,
		`SELECT id FROM exchange_accounts WHERE user_id = $1 ORDER BY id LIMIT 1`, userID).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("%w: user id %d", ErrNoExchangeAccount, userID)
	}
	if err != nil {
		return 0, fmt.Errorf("db: exchange account of user id %d: %w", userID, err)
	}
	return id, nil
}

// SeedUser creates or updates the user (provider, sub) with settings (nil
// means {}) and makes sure it has an unlabelled account on exchange, in one
// transaction. It returns the ids of both; seeding again returns the same
// ids and replaces the settings.
func (u *Users) SeedUser(ctx context.Context, provider, sub string, settings json.RawMessage, exchange string) (userID, exchangeID int64, err error) {
	switch {
	case provider == "":
		return 0, 0, fmt.Errorf("%w: provider is empty", ErrInvalidInput)
	case sub == "":
		return 0, 0, fmt.Errorf("%w: sub is empty", ErrInvalidInput)
	case exchange == "":
		return 0, 0, fmt.Errorf("%w: exchange is empty", ErrInvalidInput)
	case settings == nil:
		settings = json.RawMessage("{}")
	case !json.Valid(settings):
		return 0, 0, fmt.Errorf("%w: settings of user %q are not valid JSON", ErrInvalidInput, sub)
	}
	err = pgx.BeginFunc(ctx, u.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
			INSERT INTO users (identity_provider, identity_sub, settings)
			VALUES ($1, $2, $3)
			ON CONFLICT (identity_provider, identity_sub)
			DO UPDATE SET settings = EXCLUDED.settings, updated_at = now()
			RETURNING id`, provider, sub, string(settings)).Scan(&userID)
		if err != nil {
			return fmt.Errorf("upsert user: %w", err)
		}
		err = tx.QueryRow(ctx, `
			INSERT INTO exchange_accounts (user_id, exchange)
			VALUES ($1, $2)
			ON CONFLICT (user_id, exchange, label)
			DO UPDATE SET exchange = EXCLUDED.exchange
			RETURNING id`, userID, exchange).Scan(&exchangeID)
		if err != nil {
			return fmt.Errorf("upsert exchange account: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("db: seed user %s/%s: %w", provider, sub, err)
	}
	return userID, exchangeID, nil
}
