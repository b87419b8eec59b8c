package membership

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/natsx"
)

// bucketTTL is how long a heartbeat stays in Bucket: the entries of
// instances that died without leaving (per-process names never come back)
// expire after it.
const bucketTTL = time.Minute

// bucketConfig is the configuration of Bucket: file-backed so it survives
// a nats-server restart, replicated as the JetStream given to Join or
// WatchRoster replicates buckets (natsx.WithReplicas).
var bucketConfig = jetstream.KeyValueConfig{
	Bucket:      Bucket,
	Description: "vigil live service instances (key <service>.<instance>)",
	History:     1,
	TTL:         bucketTTL,
	Storage:     jetstream.FileStorage,
	Metadata:    natsx.Versioned(1),
}

// bucketStream is the stream behind Bucket.
const bucketStream = "KV_" + Bucket

// bucketSubjectPrefix starts the subject of every key of Bucket: a put or
// delete is a message published on it.
const bucketSubjectPrefix = "$KV." + Bucket + "."

// kvOperationHeader marks a delete or purge of a key (a put has none).
const kvOperationHeader = "KV-Operation"

// ensureBucket creates Bucket or updates it to bucketConfig. A bucket an
// older vigil kept in memory cannot change its storage in place: it only
// holds heartbeats, which every live member writes again within one
// interval, so it is deleted and created anew.
func ensureBucket(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := natsx.EnsureKeyValue(ctx, js, bucketConfig)
	if err == nil {
		return kv, nil
	}
	s, infoErr := js.Stream(ctx, bucketStream)
	if infoErr != nil || s.CachedInfo().Config.Storage == bucketConfig.Storage {
		return nil, fmt.Errorf("membership bucket %s: %w", Bucket, err)
	}
	if err := js.DeleteKeyValue(ctx, Bucket); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("membership bucket %s: delete the in-memory bucket: %w", Bucket, err)
	}
	if kv, err = natsx.EnsureKeyValue(ctx, js, bucketConfig); err != nil {
		return nil, fmt.Errorf("membership bucket %s: %w", Bucket, err)
	}
	return kv, nil
}

// openBucket opens Bucket, creating it when it is missing (not when it
// merely does not answer: a bucket in a leader election is left alone).
func openBucket(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return ensureBucket(ctx, js)
	}
	if err != nil {
		return nil, fmt.Errorf("membership bucket %s: %w", Bucket, err)
	}
	return kv, nil
}

// serverClockOffset is how far the local clock is ahead of the NATS
// server's (0 when the server does not tell its time). Entries read from
// the bucket carry the server's time of writing; adding the offset puts
// them on the local clock, so a host whose clock differs from the
// server's neither revives a dead member nor buries a live one.
func serverClockOffset(ctx context.Context, js jetstream.JetStream) time.Duration {
	before := time.Now()
	s, err := js.Stream(ctx, bucketStream)
	if err != nil {
		return 0
	}
	serverNow := s.CachedInfo().TimeStamp
	if serverNow.IsZero() {
		return 0
	}
	// The server stamped its answer somewhere within the round trip: take
	// the middle.
	localNow := before.Add(time.Since(before) / 2)
	return localNow.Sub(serverNow)
}
