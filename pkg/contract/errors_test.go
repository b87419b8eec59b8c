package contract_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"vigil.dev/pkg/contract"
)

// TestErrorOf maps every kind of error, wrapped or not, to the code of
// ARCHITECTURE.md §4, and checks the precedence where an error has two
// kinds.
func TestErrorOf(t *testing.T) {
	storeDeadline := fmt.Errorf("%w: get: %w", contract.NewKind(contract.ErrUnavailable, "store down"), context.DeadlineExceeded)
	tests := []struct {
		name   string
		err    error
		code   contract.ErrorCode
		fields []string
	}{
		{"field error", contract.FieldError{Field: "mode", Problem: "is required"}, contract.CodeInvalidPayload, []string{"mode"}},
		{"field errors", contract.FieldErrors{{Field: "a", Problem: "x"}, {Field: "b", Problem: "y"}}, contract.CodeInvalidPayload, []string{"a", "b"}},
		{"wrapped field error", fmt.Errorf("decode: %w", contract.FieldError{Field: "from", Problem: "bad"}), contract.CodeInvalidPayload, []string{"from"}},
		{"invalid", contract.ErrInvalid, contract.CodeInvalidPayload, nil},
		{"unknown command", fmt.Errorf("%w %q", contract.ErrUnknownCommand, "explode"), contract.CodeUnknownCommand, nil},
		{"unknown user", contract.NewKind(contract.ErrUnknownUser, "db: unknown user"), contract.CodeUnknownUser, nil},
		{"forbidden", contract.ErrForbidden, contract.CodeForbidden, nil},
		{"not your exchange", contract.NotYourExchange(7, "alice"), contract.CodeForbidden, []string{"exchange"}},
		{"busy", fmt.Errorf("alice: %w", contract.NewKind(contract.ErrBusy, "queue is full")), contract.CodeBusy, nil},
		{"conflict", contract.ErrConflict, contract.CodeConflict, nil},
		{"unavailable", contract.ErrUnavailable, contract.CodeUnavailable, nil},
		{"timeout", contract.ErrTimeout, contract.CodeTimeout, nil},
		{"deadline", fmt.Errorf("step: %w", context.DeadlineExceeded), contract.CodeTimeout, nil},
		{"store that hit its deadline", storeDeadline, contract.CodeUnavailable, nil},
		{"error object passes through", fmt.Errorf("step: %w", &contract.Error{Code: contract.CodeBusy, Message: "m"}), contract.CodeBusy, nil},
		{"anything else", errors.New("boom"), contract.CodeInternal, nil},
		{"cancelled", context.Canceled, contract.CodeInternal, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := contract.ErrorOf(tc.err)
			if got.Code != tc.code || contract.CodeOf(tc.err) != tc.code {
				t.Fatalf("ErrorOf = %s, CodeOf = %s, want %s", got.Code, contract.CodeOf(tc.err), tc.code)
			}
			if got.Message == "" {
				t.Error("no message")
			}
			var fields []string
			for _, f := range got.Fields {
				fields = append(fields, f.Field)
			}
			if fmt.Sprint(fields) != fmt.Sprint(tc.fields) {
				t.Errorf("fields = %v, want %v", fields, tc.fields)
			}
		})
	}
	if contract.ErrorOf(nil) != nil {
		t.Error("ErrorOf(nil) is not nil")
	}
	if got := contract.ErrorFrom(errors.New("boom"), contract.CodeUnavailable); got.Code != contract.CodeUnavailable {
		t.Errorf("fallback: %s", got.Code)
	}
	if got := contract.ErrorFrom(contract.ErrBusy, contract.CodeUnavailable); got.Code != contract.CodeBusy {
		t.Errorf("a kind beats the fallback: %s", got.Code)
	}
}

// TestErrorIsKind checks that an error object keeps its kind for errors.Is
// (an error that came back from another service), and that every code has
// a distinct micro service error code.
func TestErrorIsKind(t *testing.T) {
	kinds := map[contract.ErrorCode]error{
		contract.CodeInvalidPayload: contract.ErrInvalid,
		contract.CodeUnknownCommand: contract.ErrUnknownCommand,
		contract.CodeUnknownUser:    contract.ErrUnknownUser,
		contract.CodeForbidden:      contract.ErrForbidden,
		contract.CodeBusy:           contract.ErrBusy,
		contract.CodeTimeout:        contract.ErrTimeout,
		contract.CodeUnavailable:    contract.ErrUnavailable,
		contract.CodeConflict:       contract.ErrConflict,
	}
	seen := map[string]contract.ErrorCode{}
	for code, kind := range kinds {
		e := &contract.Error{Code: code, Message: "m"}
		if !errors.Is(e, kind) {
			t.Errorf("%s is not %v", code, kind)
		}
		if errors.Is(e, contract.ErrConflict) != (code == contract.CodeConflict) {
			t.Errorf("%s is conflict", code)
		}
		if contract.CodeOf(kind) != code {
			t.Errorf("CodeOf(%v) = %s, want %s", kind, contract.CodeOf(kind), code)
		}
		sc := code.ServiceCode()
		if other, dup := seen[sc]; dup && !(code == contract.CodeUnknownUser || other == contract.CodeUnknownUser) {
			t.Errorf("%s and %s share service code %s", code, other, sc)
		}
		seen[sc] = code
	}
	if contract.CodeInternal.ServiceCode() != "500" {
		t.Error("internal is not 500")
	}
}
