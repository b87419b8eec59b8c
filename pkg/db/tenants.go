package db

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Deletion is what DeleteTenant did in PostgreSQL.
type Deletion struct {
	// UserID is the deleted user's id (the {userId} of its Redis keys).
	UserID int64
	// CommandRows and AlertRows are the audit rows of the user marked
	// deleted_at (or deleted, with purgeAudit).
	CommandRows, AlertRows int64
	// AuditPurged is true when the audit rows were deleted.
	AuditPurged bool
}

// DeletedTenant returns the user id of token's earlier deletion, or
// ErrUnknownUser when token was never deleted.
func (u *Users) DeletedTenant(ctx context.Context, token string) (int64, error) {
	var id int64
	err := u.pool.QueryRow(ctx, `SELECT user_id FROM tenant_deletions WHERE user_token = $1 ORDER BY deleted_at DESC LIMIT 1`, token).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("%w: %q", ErrUnknownUser, token)
	}
	if err != nil {
		return 0, fmt.Errorf("db: deleted tenant %q: %w", token, err)
	}
	return id, nil
}

// DeleteTenant deletes user (its users row and exchange accounts) in one
// transaction, records the deletion in tenant_deletions and marks the
// user's command_log and alert_events rows deleted_at, or deletes them
// with purgeAudit. Deleting again (a row in tenant_deletions, no users
// row) marks or purges the rows that arrived meanwhile and changes
// nothing else.
func (u *Users) DeleteTenant(ctx context.Context, user User, purgeAudit bool) (Deletion, error) {
	d := Deletion{UserID: user.ID, AuditPurged: purgeAudit}
	err := pgx.BeginFunc(ctx, u.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			INSERT INTO tenant_deletions (user_token, user_id, audit_purged) VALUES ($1, $2, $3)
			ON CONFLICT (user_token, user_id) DO UPDATE SET audit_purged = tenant_deletions.audit_purged OR EXCLUDED.audit_purged`,
			user.Token, user.ID, purgeAudit); err != nil {
			return fmt.Errorf("record the deletion: %w", err)
		}
		var err error
		if d.CommandRows, err = auditRows(ctx, tx, "command_log", user, purgeAudit); err != nil {
			return err
		}
		if d.AlertRows, err = auditRows(ctx, tx, "alert_events", user, purgeAudit); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM users WHERE id = $1`, user.ID); err != nil {
			return fmt.Errorf("delete the user: %w", err)
		}
		return nil
	})
	if err != nil {
		return Deletion{}, fmt.Errorf("db: delete tenant %q: %w", user.Token, err)
	}
	return d, nil
}

// auditRows marks (or deletes) the user's rows of table, one of the audit
// tables, that are not marked yet, and returns how many.
func auditRows(ctx context.Context, tx pgx.Tx, table string, user User, purge bool) (int64, error) {
	var sql string
	switch {
	case table != "command_log" && table != "alert_events":
		return 0, fmt.Errorf("%w: %q is not an audit table", ErrInvalidInput, table)
	case purge:
		sql = `DELETE FROM ` + table + ` WHERE user_token = $1 OR user_id = $2`
	default:
		sql = `UPDATE ` + table + ` SET deleted_at = now() WHERE (user_token = $1 OR user_id = $2) AND deleted_at IS NULL`
	}
	tag, err := tx.Exec(ctx, sql, user.Token, user.ID)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", table, err)
	}
	return tag.RowsAffected(), nil
}
