package sequences_test

import (
	"context"
	"fmt"
	"testing"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/services/control/internal/desired"
	"vigil.dev/services/control/internal/directory"
	"vigil.dev/services/control/internal/ledger"
	"vigil.dev/services/control/internal/sequences"
)

// TestErrorCodes is the table of every error control answers with, in the
// ACK (intake) or the result (sequences, executor), and the code
// ARCHITECTURE.md §4 names for it; both edges map with contract.ErrorOf.
func TestErrorCodes(t *testing.T) {
	_, _, badSubject := contract.ParseCommandSubject("vigil.cmd.alice")
	_, _, unknownCmd := contract.ParseCommandSubject("vigil.cmd.alice.explode")
	_, badPayload := contract.DecodePayload(contract.CmdSwitchMode, []byte(`{"mode":"turbo"}`), contract.Limits{})
	tests := []struct {
		name string
		err  error
		code contract.ErrorCode
	}{
		{"bad subject", badSubject, contract.CodeInvalidPayload},
		{"unknown command", unknownCmd, contract.CodeUnknownCommand},
		{"bad payload", badPayload, contract.CodeInvalidPayload},
		{"bad command id", contract.ValidateCommandID("a.b"), contract.CodeInvalidPayload},
		{"unknown user", fmt.Errorf("%w: mallory", db.ErrUnknownUser), contract.CodeUnknownUser},
		{"ambiguous token", fmt.Errorf("%w: alice", db.ErrAmbiguousToken), contract.CodeConflict},
		{"user store down", fmt.Errorf("%w: %w", directory.ErrStore, db.ErrUnreachable), contract.CodeUnavailable},
		{"user store slow", fmt.Errorf("%w: %w", directory.ErrStore, context.DeadlineExceeded), contract.CodeUnavailable},
		{"queue full", fmt.Errorf("%w: alice", ledger.ErrBusy), contract.CodeBusy},
		{"id reused", fmt.Errorf("%w: op-1", ledger.ErrIDConflict), contract.CodeConflict},
		{"command log down", fmt.Errorf("%w: insert: %w", ledger.ErrStore, context.DeadlineExceeded), contract.CodeUnavailable},
		{"state store down", fmt.Errorf("%w: get alice", desired.ErrStore), contract.CodeUnavailable},
		{"state changed", fmt.Errorf("%w: alice", desired.ErrChanged), contract.CodeConflict},
		{"no exchange account", fmt.Errorf("%w: alice", sequences.ErrNoExchange), contract.CodeConflict},
		{"no exchange account (db)", db.ErrNoExchangeAccount, contract.CodeConflict},
		// Changed: intake said invalid_payload, sequences forbidden.
		{"another user's exchange", contract.NotYourExchange(9, "alice"), contract.CodeForbidden},
		{"cancelled by pause", &sequences.CancelledError{By: "p-1"}, contract.CodeConflict},
		// Changed: intake said unavailable, sequences timeout.
		{"deadline", fmt.Errorf("pause: %w", context.DeadlineExceeded), contract.CodeTimeout},
		{"step not confirmed", &contract.Error{Code: contract.CodeTimeout, Message: "no instance answered"}, contract.CodeTimeout},
		{"other", fmt.Errorf("encode payload: boom"), contract.CodeInternal},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil {
				t.Fatal("no error to map")
			}
			if got := contract.ErrorOf(tc.err); got.Code != tc.code {
				t.Errorf("code = %s (%s), want %s", got.Code, got.Message, tc.code)
			}
		})
	}
}
