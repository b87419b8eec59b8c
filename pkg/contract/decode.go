package contract

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Two decoders, for two kinds of sender (docs/design.md, "Strict input"):
//
//   - DecodeStrict is for what a person wrote: command payloads, settings
//     documents, control's status request. Member names must match exactly
//     (case too), a name given twice, an unknown member, invalid UTF-8 and
//     data after the value are errors that name the field.
//   - DecodePeer is for what another vigil instance sent (verb requests and
//     arguments): the same, except that unknown members are ignored, so an
//     older instance reads a newer one's messages during a rolling upgrade.
//
// Both are encoding/json/v2 (github.com/go-json-experiment/json, which
// aliases the standard library's once it ships without GOEXPERIMENT), whose
// defaults already match names exactly and reject duplicates.

// DecodeStrict decodes one JSON value into T as operator input is decoded:
// exact names, no duplicates, no unknown members, nothing after the value.
// Errors are FieldErrors (ErrInvalid) naming the field, or "payload".
func DecodeStrict[T any](body []byte) (T, error) {
	var v T
	if err := jsonv2.Unmarshal(body, &v, jsonv2.RejectUnknownMembers(true)); err != nil {
		return v, jsonFieldError(err)
	}
	return v, nil
}

// DecodePeer decodes one JSON value into T as messages between vigil's own
// services are decoded: like DecodeStrict, but unknown members are ignored.
func DecodePeer[T any](body []byte) (T, error) {
	var v T
	if err := jsonv2.Unmarshal(body, &v); err != nil {
		return v, jsonFieldError(err)
	}
	return v, nil
}

// jsonFieldError turns a JSON decoding error into a FieldError that names
// the field where it can ("timeframes[0]", "rules.position-monitor[2].op"),
// else "payload".
func jsonFieldError(err error) error {
	var syn *jsontext.SyntacticError
	var sem *jsonv2.SemanticError
	switch {
	case errors.As(err, &syn) && errors.Is(syn.Err, jsontext.ErrDuplicateName):
		return FieldError{Field: fieldOf(syn.JSONPointer), Problem: "is given twice"}
	case errors.As(err, &syn):
		return FieldError{Field: "payload", Problem: fmt.Sprintf("is not valid JSON at byte %d: %v", syn.ByteOffset, syn.Err)}
	case errors.As(err, &sem) && errors.Is(sem.Err, jsonv2.ErrUnknownName):
		return FieldError{Field: fieldOf(sem.JSONPointer), Problem: "is not a known field (names match exactly, case too)"}
	case errors.As(err, &sem):
		return FieldError{Field: fieldOf(sem.JSONPointer), Problem: semanticProblem(sem)}
	}
	return FieldError{Field: "payload", Problem: err.Error()}
}

// semanticProblem says what is wrong with a value of the wrong type.
func semanticProblem(sem *jsonv2.SemanticError) string {
	want := "a different value"
	if sem.GoType != nil {
		want = goTypeName(sem.GoType.Kind().String(), sem.GoType.String())
	}
	got := ""
	if sem.JSONKind != 0 {
		got = ", got JSON " + sem.JSONKind.String()
	}
	if sem.Err != nil && !strings.Contains(sem.Err.Error(), "cannot unmarshal") {
		return fmt.Sprintf("must be %s%s: %v", want, got, sem.Err)
	}
	return fmt.Sprintf("must be %s%s", want, got)
}

// goTypeName names a Go type for an operator: a list, an object, a number,
// a string, true or false.
func goTypeName(kind, name string) string {
	switch kind {
	case "slice", "array":
		return "a list"
	case "map", "struct":
		if name == "time.Time" {
			return "an RFC 3339 time"
		}
		return "an object"
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	}
	return name
}

// fieldOf spells a JSON pointer as the contract's field names: /a/b/0 is
// a.b[0]; the empty pointer is "payload".
func fieldOf(p jsontext.Pointer) string {
	var b strings.Builder
	for tok := range p.Tokens() {
		if _, err := strconv.ParseUint(tok, 10, 64); err == nil && b.Len() > 0 {
			b.WriteString("[" + tok + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(tok)
	}
	if b.Len() == 0 {
		return "payload"
	}
	return b.String()
}
