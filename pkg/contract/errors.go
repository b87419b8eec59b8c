package contract

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors of the contract. Validation failures wrap ErrInvalid, so
// callers check them with errors.Is and map them to CodeInvalidPayload at the
// edge.
var (
	// ErrInvalid is wrapped by every validation failure.
	ErrInvalid = errors.New("invalid")
	// ErrUnknownCommand reports a command name that the contract lacks.
	ErrUnknownCommand = errors.New("unknown command")
)

// ErrorCode is one of the error codes of a command ACK or result.
type ErrorCode string

// The error codes of ARCHITECTURE.md §4.
const (
	CodeInvalidPayload ErrorCode = "invalid_payload"
	CodeUnknownCommand ErrorCode = "unknown_command"
	CodeUnknownUser    ErrorCode = "unknown_user"
	CodeForbidden      ErrorCode = "forbidden"
	CodeBusy           ErrorCode = "busy"
	CodeTimeout        ErrorCode = "timeout"
	CodeUnavailable    ErrorCode = "unavailable"
	CodeConflict       ErrorCode = "conflict"
	CodeInternal       ErrorCode = "internal"
)

// Error is the error object of an ACK, a result or a service reply.
type Error struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
	// Fields lists every field problem when Code is invalid_payload.
	Fields []FieldError `json:"fields,omitempty"`
}

// Error implements error.
func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// FieldError names one invalid field and what is wrong with it.
type FieldError struct {
	Field   string `json:"field"`
	Problem string `json:"problem"`
}

// Error implements error; it wraps ErrInvalid.
func (e FieldError) Error() string { return e.Field + ": " + e.Problem }

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e FieldError) Unwrap() error { return ErrInvalid }

// FieldErrors is a list of field problems reported together.
type FieldErrors []FieldError

// Error joins the problems into one line.
func (es FieldErrors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (es FieldErrors) Unwrap() error { return ErrInvalid }

// fieldErrs collects field problems during validation.
type fieldErrs struct{ list FieldErrors }

func (f *fieldErrs) add(field, format string, args ...any) {
	f.list = append(f.list, FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
}

// check adds err under field when it is not nil. A FieldError from a nested
// validator keeps its own problem text but gets the outer field name.
func (f *fieldErrs) check(field string, err error) {
	if err == nil {
		return
	}
	var fe FieldError
	if errors.As(err, &fe) {
		f.list = append(f.list, FieldError{Field: field, Problem: fe.Problem})
		return
	}
	var fes FieldErrors
	if errors.As(err, &fes) {
		for _, e := range fes {
			f.list = append(f.list, FieldError{Field: field + "." + e.Field, Problem: e.Problem})
		}
		return
	}
	f.list = append(f.list, FieldError{Field: field, Problem: err.Error()})
}

func (f *fieldErrs) err() error {
	if len(f.list) == 0 {
		return nil
	}
	return f.list
}

// ErrorFrom maps an error to the contract's Error object: validation errors
// become invalid_payload with their fields, a *Error passes through, and
// anything else becomes the fallback code.
func ErrorFrom(err error, fallback ErrorCode) *Error {
	if err == nil {
		return nil
	}
	var ce *Error
	if errors.As(err, &ce) {
		return ce
	}
	if errors.Is(err, ErrUnknownCommand) {
		return &Error{Code: CodeUnknownCommand, Message: err.Error()}
	}
	if errors.Is(err, ErrInvalid) {
		out := &Error{Code: CodeInvalidPayload, Message: err.Error()}
		var fes FieldErrors
		var fe FieldError
		switch {
		case errors.As(err, &fes):
			out.Fields = fes
		case errors.As(err, &fe):
			out.Fields = []FieldError{fe}
		}
		return out
	}
	return &Error{Code: fallback, Message: err.Error()}
}
