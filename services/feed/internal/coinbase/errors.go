package coinbase

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinel errors. Every error returned by this package wraps one of them, so
// callers test with [errors.Is].
var (
	// ErrInvalidConfig means a StreamConfig or RESTConfig field is out of range.
	ErrInvalidConfig = errors.New("coinbase: invalid config")
	// ErrInvalidProduct means a product id does not match the product id format.
	ErrInvalidProduct = errors.New("coinbase: invalid product id")
	// ErrInvalidChannel means a channel cannot be subscribed through Stream.
	ErrInvalidChannel = errors.New("coinbase: unsupported channel")
	// ErrInvalidGranularity means a granularity or timeframe is not one of the supported six.
	ErrInvalidGranularity = errors.New("coinbase: unsupported granularity")
	// ErrInvalidRange means a time range is empty or reversed.
	ErrInvalidRange = errors.New("coinbase: invalid time range")
	// ErrNotSubscribed means Unsubscribe was called more often than Subscribe.
	ErrNotSubscribed = errors.New("coinbase: not subscribed")
	// ErrAlreadyRunning means Stream.Run was called while it was already running.
	ErrAlreadyRunning = errors.New("coinbase: stream already running")
	// ErrInvalidKey means a CDP key name or private key could not be used.
	ErrInvalidKey = errors.New("coinbase: invalid CDP key")
	// ErrSilence means the stream received nothing within the silence timeout.
	ErrSilence = errors.New("coinbase: stream silent")
	// ErrMalformedFrame means a WebSocket frame could not be decoded or failed validation.
	ErrMalformedFrame = errors.New("coinbase: malformed frame")
	// ErrUnknownChannel means a WebSocket frame named a channel this client does not handle.
	ErrUnknownChannel = errors.New("coinbase: unknown channel")
	// ErrUnknownProduct means the exchange answered 404 for the product.
	ErrUnknownProduct = errors.New("coinbase: unknown product")
	// ErrBadRequest means the exchange answered 400 (for example too many buckets).
	ErrBadRequest = errors.New("coinbase: bad request")
	// ErrUnauthorized means the exchange kept answering 401 after all retries.
	ErrUnauthorized = errors.New("coinbase: unauthorized")
	// ErrRateLimited means the exchange kept answering 429 after all retries.
	ErrRateLimited = errors.New("coinbase: rate limited")
	// ErrUnexpectedStatus means the exchange answered with another non-2xx status.
	ErrUnexpectedStatus = errors.New("coinbase: unexpected HTTP status")
	// ErrMalformedResponse means a REST response body could not be decoded or failed validation.
	ErrMalformedResponse = errors.New("coinbase: malformed response")
)

// APIError is a non-2xx REST answer. It unwraps to the sentinel that matches
// its status: ErrBadRequest, ErrUnauthorized, ErrUnknownProduct,
// ErrRateLimited or ErrUnexpectedStatus.
type APIError struct {
	// StatusCode is the HTTP status code.
	StatusCode int
	// Code is the body's "error" field, such as "INVALID_ARGUMENT" or "NOT_FOUND".
	Code string
	// Message is the body's "message" field.
	Message string
	// Details is the body's "error_details" field.
	Details string
	// Attempts is how many requests were made before giving up.
	Attempts int
}

// Error describes the status and what the exchange said.
func (e *APIError) Error() string {
	msg := e.Details
	if msg == "" {
		msg = e.Message
	}
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	if e.Code != "" {
		msg = e.Code + ": " + msg
	}
	return fmt.Sprintf("%v: HTTP %d after %d attempt(s): %s", e.Unwrap(), e.StatusCode, e.Attempts, msg)
}

// Unwrap returns the sentinel for the status code.
func (e *APIError) Unwrap() error {
	switch e.StatusCode {
	case http.StatusBadRequest:
		return ErrBadRequest
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusNotFound:
		return ErrUnknownProduct
	case http.StatusTooManyRequests:
		return ErrRateLimited
	default:
		return ErrUnexpectedStatus
	}
}
