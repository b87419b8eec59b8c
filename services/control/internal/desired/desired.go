// Package desired reads and writes users' desired state in the KV bucket
// VIGIL_STATE (key user.<token>). Writes are compare-and-set on the entry's
// KV revision, so a write based on a stale read fails instead of losing
// another writer's change.
package desired

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
)

// Errors of the store.
var (
	// ErrChanged reports a state that changed since it was read.
	ErrChanged = contract.NewKind(contract.ErrConflict, "desired: state changed since it was read")
	// ErrStore reports a KV failure.
	ErrStore = contract.NewKind(contract.ErrUnavailable, "desired: state store unavailable")
)

// Entry is a user's desired state with the KV revision it was read at
// (0: the user has no state yet).
type Entry struct {
	State contract.DesiredState
	KVRev uint64
}

// Exists reports whether the state was read from the bucket.
func (e Entry) Exists() bool { return e.KVRev != 0 }

// Store is the desired-state bucket.
type Store struct {
	js jetstream.JetStream
	kv jetstream.KeyValue
}

// Open opens the VIGIL_STATE bucket (natsx.EnsureStreams creates it).
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w", ErrStore, contract.BucketState, err)
	}
	return &Store{js: js, kv: kv}, nil
}

// Get reads user's state from the bucket's leader (natsx.KVGet: a
// replica may not hold the last write yet, and the state read decides the
// next compare-and-set, or that none is needed); a user without state
// gives an Entry with KVRev 0.
func (s *Store) Get(ctx context.Context, user string) (Entry, error) {
	e, err := natsx.KVGet(ctx, s.js, contract.BucketState, contract.StateKey(user))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Entry{}, nil
	}
	if err != nil {
		return Entry{}, fmt.Errorf("%w: get %s: %w", ErrStore, user, err)
	}
	var st contract.DesiredState
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return Entry{}, fmt.Errorf("%w: state of %s is not a desired state: %w", ErrStore, user, err)
	}
	return Entry{State: st, KVRev: e.Revision()}, nil
}

// Put writes st over the entry read at kvRev (0: create it) and returns the
// new KV revision. A concurrent change gives ErrChanged.
func (s *Store) Put(ctx context.Context, st contract.DesiredState, kvRev uint64) (uint64, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return 0, fmt.Errorf("%w: encode state of %s: %w", ErrStore, st.User, err)
	}
	var rev uint64
	if kvRev == 0 {
		rev, err = s.kv.Create(ctx, contract.StateKey(st.User), b)
	} else {
		rev, err = s.kv.Update(ctx, contract.StateKey(st.User), b, kvRev)
	}
	switch {
	case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		return 0, fmt.Errorf("%w: %s", ErrChanged, st.User)
	case err != nil:
		return 0, fmt.Errorf("%w: put %s: %w", ErrStore, st.User, err)
	}
	return rev, nil
}
