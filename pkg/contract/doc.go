// Package contract is vigil's service contract in code: the NATS subjects,
// Redis keys, JSON payloads, error codes and validation rules that
// ARCHITECTURE.md fixes. Every rule the contract states lives here exactly
// once; services build subjects and keys and validate input only through
// this package.
package contract
