package natsx

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// WithReplicas returns js with one difference: streams and KV buckets it
// creates or updates get n replicas unless their configuration names a
// number. Every vigil binary creates its streams and buckets through it
// (VIGIL_STREAM_REPLICAS), so a cluster of three servers can keep them
// through the loss of one. n <= 1 returns js itself.
func WithReplicas(js jetstream.JetStream, n int) jetstream.JetStream {
	if n <= 1 {
		return js
	}
	return replicated{JetStream: js, replicas: n}
}

// replicated is the JetStream of WithReplicas.
type replicated struct {
	jetstream.JetStream
	replicas int
}

func (r replicated) stream(cfg jetstream.StreamConfig) jetstream.StreamConfig {
	if cfg.Replicas == 0 {
		cfg.Replicas = r.replicas
	}
	return cfg
}

func (r replicated) bucket(cfg jetstream.KeyValueConfig) jetstream.KeyValueConfig {
	if cfg.Replicas == 0 {
		cfg.Replicas = r.replicas
	}
	return cfg
}

// CreateStream creates the stream with the default replicas.
func (r replicated) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return r.JetStream.CreateStream(ctx, r.stream(cfg))
}

// UpdateStream updates the stream with the default replicas.
func (r replicated) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return r.JetStream.UpdateStream(ctx, r.stream(cfg))
}

// CreateOrUpdateStream creates or updates the stream with the default
// replicas.
func (r replicated) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return r.JetStream.CreateOrUpdateStream(ctx, r.stream(cfg))
}

// CreateKeyValue creates the bucket with the default replicas.
func (r replicated) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return r.JetStream.CreateKeyValue(ctx, r.bucket(cfg))
}

// UpdateKeyValue updates the bucket with the default replicas.
func (r replicated) UpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return r.JetStream.UpdateKeyValue(ctx, r.bucket(cfg))
}

// CreateOrUpdateKeyValue creates or updates the bucket with the default
// replicas.
func (r replicated) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return r.JetStream.CreateOrUpdateKeyValue(ctx, r.bucket(cfg))
}
