package contract

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// The kinds of error of the contract, one per error code of ARCHITECTURE.md
// §4 (internal has none: it is what is left). An error anywhere in vigil
// gets its code by wrapping one of these (fmt.Errorf("...: %w", ErrBusy), or
// a sentinel made with NewKind); ErrorOf maps it with errors.Is at the edge
// (ACK, result, verb reply), in one place.
var (
	// ErrInvalid is wrapped by every validation failure (invalid_payload).
	ErrInvalid = errors.New("invalid")
	// ErrUnknownCommand reports a command name that the contract lacks
	// (unknown_command).
	ErrUnknownCommand = errors.New("unknown command")
	// ErrUnknownUser reports a user token that names no user (unknown_user).
	ErrUnknownUser = errors.New("unknown user")
	// ErrForbidden reports a request for something that is not the user's,
	// such as another user's exchange account (forbidden).
	ErrForbidden = errors.New("forbidden")
	// ErrBusy reports a full queue (busy).
	ErrBusy = errors.New("busy")
	// ErrTimeout reports work that did not finish in time (timeout);
	// context.DeadlineExceeded maps to the same code.
	ErrTimeout = errors.New("timeout")
	// ErrUnavailable reports a store or service that cannot be reached
	// (unavailable). It takes precedence over a deadline: a store that did
	// not answer in time is unavailable.
	ErrUnavailable = errors.New("unavailable")
	// ErrConflict reports a request that contradicts the current state: a
	// reused id, a state changed meanwhile, a command cancelled by another
	// (conflict).
	ErrConflict = errors.New("conflict")
)

// ErrNotYourExchange reports an exchange account that is not one of the
// user's (forbidden); the same answer whether it is another user's or no
// one's, so nothing about other tenants shows.
var ErrNotYourExchange = NewKind(ErrForbidden, "not an exchange account of the user")

// NotYourExchange is the error of a request naming exchange account
// exchange, which is not one of user's: a FieldError of field "exchange" and
// kind ErrNotYourExchange (forbidden).
func NotYourExchange(exchange int64, user string) error {
	return FieldError{Field: "exchange", Problem: fmt.Sprintf("%d is %v %s", exchange, ErrNotYourExchange, user), Kind: ErrNotYourExchange}
}

// kinds maps the error kinds to their codes, in the order ErrorOf checks
// them: the first kind an error wraps decides its code.
var kinds = []struct {
	kind error
	code ErrorCode
}{
	{ErrInvalid, CodeInvalidPayload},
	{ErrUnknownCommand, CodeUnknownCommand},
	{ErrUnknownUser, CodeUnknownUser},
	{ErrForbidden, CodeForbidden},
	{ErrConflict, CodeConflict},
	{ErrBusy, CodeBusy},
	{ErrUnavailable, CodeUnavailable},
	{ErrTimeout, CodeTimeout},
	{context.DeadlineExceeded, CodeTimeout},
}

// NewKind returns a sentinel error whose text is text and which
// errors.Is matches to kind (one of the Err* kinds above), so a package
// keeps its own error names and messages while the code is decided here:
//
//	var ErrBusy = contract.NewKind(contract.ErrBusy, "ledger: queue is full")
func NewKind(kind error, text string) error { return &kindError{text: text, kind: kind} }

// kindError is an error of a kind with its own text.
type kindError struct {
	text string
	kind error
}

func (e *kindError) Error() string { return e.text }
func (e *kindError) Unwrap() error { return e.kind }

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

// ServiceCode is the Nats-Service-Error-Code header value of c (micro's
// Request.Error), in the HTTP-like numbers micro clients expect.
func (c ErrorCode) ServiceCode() string {
	switch c {
	case CodeInvalidPayload:
		return "400"
	case CodeForbidden:
		return "403"
	case CodeUnknownCommand, CodeUnknownUser:
		return "404"
	case CodeConflict:
		return "409"
	case CodeBusy:
		return "429"
	case CodeUnavailable:
		return "503"
	case CodeTimeout:
		return "504"
	}
	return "500"
}

// Error is the error object of an ACK, a result or a service reply.
type Error struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
	// Fields lists every field at fault (always for invalid_payload, and
	// for a forbidden field such as another user's exchange).
	Fields []FieldError `json:"fields,omitempty"`
}

// Error implements error.
func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Is makes errors.Is(err, ErrBusy) true for an *Error with code busy, and so
// on for every code, so an error object that came back from another
// service keeps its kind.
func (e *Error) Is(target error) bool {
	for _, k := range kinds {
		if k.kind == target {
			return k.code == e.Code
		}
	}
	return false
}

// FieldError names one field at fault and what is wrong with it.
type FieldError struct {
	Field   string `json:"field"`
	Problem string `json:"problem"`
	// Kind is the kind of error (ErrForbidden, ...) when it is not
	// ErrInvalid; nil means invalid.
	Kind error `json:"-"`
}

// Error implements error.
func (e FieldError) Error() string { return e.Field + ": " + e.Problem }

// Unwrap returns the kind: errors.Is(err, ErrInvalid) is true unless Kind
// says otherwise.
func (e FieldError) Unwrap() error {
	if e.Kind != nil {
		return e.Kind
	}
	return ErrInvalid
}

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

// CodeOf returns the code of err: the code of the first kind it wraps (see
// kinds), the code of a wrapped *Error, else internal.
func CodeOf(err error) ErrorCode {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Code
	}
	for _, k := range kinds {
		if errors.Is(err, k.kind) {
			return k.code
		}
	}
	return CodeInternal
}

// ErrorOf maps an error to the contract's Error object, the one mapping of
// errors to codes: a wrapped *Error passes through, validation errors
// become invalid_payload with their fields, an error of a kind gets the
// kind's code and anything else is internal. Nil gives nil.
func ErrorOf(err error) *Error {
	return ErrorFrom(err, CodeInternal)
}

// ErrorFrom is ErrorOf with fallback as the code of an error of no kind
// (e.g. unavailable for a status reply that failed).
func ErrorFrom(err error, fallback ErrorCode) *Error {
	if err == nil {
		return nil
	}
	var ce *Error
	if errors.As(err, &ce) {
		return ce
	}
	code := CodeOf(err)
	if code == CodeInternal {
		code = fallback
	}
	out := &Error{Code: code, Message: err.Error()}
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
