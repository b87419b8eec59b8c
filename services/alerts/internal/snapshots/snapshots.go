// Package snapshots keeps each user's rule-engine memory (rules.Snapshot)
// in the NATS KV bucket VIGIL_ALERT_STATE under user.<token>, so that the
// instance that takes a user over continues where the previous owner
// stopped: it neither fires an alert again nor misses a transition.
package snapshots

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/services/alerts/internal/rules"
)

// Bucket is the KV bucket of engine snapshots.
const Bucket = natsx.BucketAlertState

// ErrCorrupt reports a stored snapshot that does not decode.
var ErrCorrupt = errors.New("snapshots: corrupt snapshot")

// BucketConfig is the configuration of Bucket: file storage, one value per
// key.
var BucketConfig = jetstream.KeyValueConfig{
	Bucket:      Bucket,
	Description: "vigil-alerts rule-engine memory per user (key user.<token>)",
	History:     1,
	Storage:     jetstream.FileStorage,
	Metadata:    natsx.Versioned(1),
}

// Store reads and writes snapshots.
type Store struct {
	js jetstream.JetStream
	kv jetstream.KeyValue
}

// Open creates Bucket or updates it to BucketConfig and returns its store.
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := natsx.EnsureKeyValue(ctx, js, BucketConfig)
	if err != nil {
		return nil, err
	}
	return &Store{js: js, kv: kv}, nil
}

// Load returns user's snapshot, read from the bucket's leader
// (natsx.KVGet: an instance that gains the user must see the last
// snapshot its previous owner saved, which a lagging replica may not
// hold yet); ok is false when none is stored.
func (s *Store) Load(ctx context.Context, user string) (snap rules.Snapshot, ok bool, err error) {
	e, err := natsx.KVGet(ctx, s.js, Bucket, contract.StateKey(user))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return rules.Snapshot{}, false, nil
	}
	if err != nil {
		return rules.Snapshot{}, false, fmt.Errorf("kv %s get %s: %w", Bucket, user, err)
	}
	if err := json.Unmarshal(e.Value(), &snap); err != nil {
		return rules.Snapshot{}, false, fmt.Errorf("%w: user %s: %w", ErrCorrupt, user, err)
	}
	return snap, true, nil
}

// Save stores user's snapshot.
func (s *Store) Save(ctx context.Context, user string, snap rules.Snapshot) error {
	doc, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("kv %s put %s: %w", Bucket, user, err)
	}
	if _, err := s.kv.Put(ctx, contract.StateKey(user), doc); err != nil {
		return fmt.Errorf("kv %s put %s: %w", Bucket, user, err)
	}
	return nil
}
