package ledger

// This file: the reads of command_log, the projection this package
// writes, so that the table has one owner (vigilctl reads through here).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"vigil.dev/pkg/contract"
)

// HistoryEntry is one command of a user's audit trail in command_log.
type HistoryEntry struct {
	ID       string `json:"id"`
	User     string `json:"user"`
	Command  string `json:"command"`
	Status   string `json:"status"`
	Operator string `json:"operator"`
	// OperatorName is the display name the client chose (--operator);
	// Operator the identity the NATS server authenticated.
	OperatorName string          `json:"operator_name,omitempty"`
	Payload      json.RawMessage `json:"payload"`
	Result       json.RawMessage `json:"result,omitempty"`
	Error        *contract.Error `json:"error,omitempty"`
	TraceID      string          `json:"trace_id,omitempty"`
	AcceptedAt   time.Time       `json:"accepted_at"`
	FinishedAt   *time.Time      `json:"finished_at,omitempty"`
}

// History reads user's latest limit commands from command_log, oldest
// first.
func History(ctx context.Context, pool *pgxpool.Pool, user string, limit int) ([]HistoryEntry, error) {
	rows, err := pool.Query(ctx, `
		SELECT id, user_token, command, status, operator, operator_name, payload, result, error,
		       coalesce(trace_id, ''), accepted_at, finished_at
		FROM command_log
		WHERE user_token = $1
		ORDER BY accepted_at DESC, seq DESC
		LIMIT $2`, user, limit)
	if err != nil {
		return nil, fmt.Errorf("read command_log: %w", err)
	}
	entries, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (HistoryEntry, error) {
		var e HistoryEntry
		var result, errJSON []byte
		if err := row.Scan(&e.ID, &e.User, &e.Command, &e.Status, &e.Operator, &e.OperatorName, &e.Payload, &result, &errJSON,
			&e.TraceID, &e.AcceptedAt, &e.FinishedAt); err != nil {
			return e, err
		}
		if len(result) > 0 {
			e.Result = result
		}
		if len(errJSON) > 0 && string(errJSON) != "null" {
			e.Error = &contract.Error{}
			if err := json.Unmarshal(errJSON, e.Error); err != nil {
				e.Error = &contract.Error{Message: string(errJSON)}
			}
		}
		return e, nil
	})
	if err != nil {
		return nil, fmt.Errorf("read command_log: %w", err)
	}
	slices.Reverse(entries)
	return entries, nil
}

// Recorded reports the status command_log holds for command id, and
// false while the table has no row of it yet.
func Recorded(ctx context.Context, pool *pgxpool.Pool, id string) (status string, found bool, err error) {
	err = pool.QueryRow(ctx, `SELECT status FROM command_log WHERE id = $1`, id).Scan(&status)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read command_log: %w", err)
	}
	return status, true, nil
}
