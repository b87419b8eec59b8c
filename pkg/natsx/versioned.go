package natsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Versioned configuration (docs/deploy.md "Rolling upgrades"): every
// stream, KV bucket and shared durable consumer vigil creates carries the
// version of its configuration in its metadata (nats-server 2.10 or
// later keeps it). An instance creates what is missing, updates in place
// what carries its own version or an older one (or none: created before
// versions), and leaves alone, logging it, what a newer instance has
// already updated: during a rolling upgrade an instance of the previous
// version that starts again must not undo the new configuration.
//
// Bump a configuration's version whenever it changes; TestConfigVersions
// fails when a recorded configuration changed under the same version.

// ConfigVersionKey is the metadata key that holds a configuration's version.
const ConfigVersionKey = "vigil.config_version"

// serverMetadataPrefix starts the metadata keys the server sets itself.
const serverMetadataPrefix = "_nats."

// Versioned is the metadata of a configuration of version v (v >= 1).
func Versioned(v int) map[string]string {
	return map[string]string{ConfigVersionKey: strconv.Itoa(v)}
}

// ConfigVersion is the version in metadata, or 0 when it has none (a
// configuration written before versions, or by hand).
func ConfigVersion(metadata map[string]string) int {
	v, err := strconv.Atoi(metadata[ConfigVersionKey])
	if err != nil || v < 0 {
		return 0
	}
	return v
}

// errUnversioned reports a configuration without a version: a mistake in
// vigil's code, not in the server's state.
var errUnversioned = errors.New("configuration has no " + ConfigVersionKey + " (natsx.Versioned)")

// An EnsureOption changes how the Ensure functions work.
type EnsureOption func(*ensureOptions)

type ensureOptions struct {
	log *slog.Logger
}

// LogTo makes the Ensure functions log to log (slog.Default otherwise)
// what they create, update and leave alone.
func LogTo(log *slog.Logger) EnsureOption {
	return func(o *ensureOptions) { o.log = log }
}

func ensureOpts(opts []EnsureOption) ensureOptions {
	o := ensureOptions{log: slog.Default()}
	for _, f := range opts {
		f(&o)
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	return o
}

// versionGate compares the version have of what the server holds with
// want of this binary's configuration: true when this binary may write
// its configuration, false (logged) when the server's is newer.
func versionGate(log *slog.Logger, kind, name string, have, want int) bool {
	if have > want {
		log.Warn("left as it is: a newer vigil version configured it", kind, name,
			"server_config_version", have, "own_config_version", want)
		return false
	}
	if have < want {
		log.Info("updating the configuration in place", kind, name, "from_version", have, "to_version", want)
	}
	return true
}

// withVersion is want's metadata over have's, without the server's own
// keys (it sets them again): keys an operator added are kept.
func withVersion(want, have map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range have {
		if !strings.HasPrefix(k, serverMetadataPrefix) {
			out[k] = v
		}
	}
	maps.Copy(out, want)
	return out
}

// EnsureStream creates the stream of cfg, or updates it in place to cfg
// unless the server holds a newer version of it (then it is left as it is
// and returned). cfg.Metadata must carry a version (Versioned). A change
// the server cannot make in place (storage, retention) is an error naming
// the stream; nothing is changed or recreated then.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig, opts ...EnsureOption) (jetstream.Stream, error) {
	o := ensureOpts(opts)
	want := ConfigVersion(cfg.Metadata)
	if want == 0 {
		return nil, fmt.Errorf("stream %s: %w", cfg.Name, errUnversioned)
	}
	for range 3 {
		s, err := js.Stream(ctx, cfg.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			s, err = js.CreateStream(ctx, cfg)
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				continue // another instance created it meanwhile: compare with that
			}
			if err != nil {
				return nil, fmt.Errorf("stream %s: create: %w", cfg.Name, err)
			}
			return s, nil
		}
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
		have := s.CachedInfo().Config.Metadata
		if !versionGate(o.log, "stream", cfg.Name, ConfigVersion(have), want) {
			return s, nil
		}
		cfg.Metadata = withVersion(cfg.Metadata, have)
		if s, err = js.UpdateStream(ctx, cfg); err != nil {
			return nil, fmt.Errorf("stream %s: update to configuration version %d (it has %d): %w", cfg.Name, want, ConfigVersion(have), err)
		}
		return s, nil
	}
	return nil, fmt.Errorf("stream %s: created and deleted again while it was being configured", cfg.Name)
}

// EnsureKeyValue creates the bucket of cfg, or updates it in place to cfg
// unless the server holds a newer version of it, as EnsureStream does.
func EnsureKeyValue(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig, opts ...EnsureOption) (jetstream.KeyValue, error) {
	o := ensureOpts(opts)
	want := ConfigVersion(cfg.Metadata)
	if want == 0 {
		return nil, fmt.Errorf("kv %s: %w", cfg.Bucket, errUnversioned)
	}
	for range 3 {
		s, err := js.Stream(ctx, "KV_"+cfg.Bucket)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			kv, err := js.CreateKeyValue(ctx, cfg)
			if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("kv %s: create: %w", cfg.Bucket, err)
			}
			return kv, nil
		}
		if err != nil {
			return nil, fmt.Errorf("kv %s: %w", cfg.Bucket, err)
		}
		have := s.CachedInfo().Config.Metadata
		if !versionGate(o.log, "bucket", cfg.Bucket, ConfigVersion(have), want) {
			kv, err := js.KeyValue(ctx, cfg.Bucket)
			if err != nil {
				return nil, fmt.Errorf("kv %s: %w", cfg.Bucket, err)
			}
			return kv, nil
		}
		cfg.Metadata = withVersion(cfg.Metadata, have)
		kv, err := js.UpdateKeyValue(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("kv %s: update to configuration version %d (it has %d): %w", cfg.Bucket, want, ConfigVersion(have), err)
		}
		return kv, nil
	}
	return nil, fmt.Errorf("kv %s: created and deleted again while it was being configured", cfg.Bucket)
}

// EnsureConsumer creates the durable consumer of cfg on stream, or
// updates it in place to cfg unless the server holds a newer version of
// it, as EnsureStream does. For consumers that instances of every version
// share (a projector's); an instance's own consumer has one writer.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig, opts ...EnsureOption) (jetstream.Consumer, error) {
	o := ensureOpts(opts)
	name := stream + " > " + cfg.Durable
	want := ConfigVersion(cfg.Metadata)
	if want == 0 || cfg.Durable == "" {
		return nil, fmt.Errorf("consumer %s: %w (and a durable name)", name, errUnversioned)
	}
	for range 3 {
		c, err := js.Consumer(ctx, stream, cfg.Durable)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			c, err = js.CreateConsumer(ctx, stream, cfg)
			if errors.Is(err, jetstream.ErrConsumerExists) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("consumer %s: create: %w", name, err)
			}
			return c, nil
		}
		if err != nil {
			return nil, fmt.Errorf("consumer %s: %w", name, err)
		}
		have := c.CachedInfo().Config.Metadata
		if !versionGate(o.log, "consumer", name, ConfigVersion(have), want) {
			return c, nil
		}
		cfg.Metadata = withVersion(cfg.Metadata, have)
		if c, err = js.UpdateConsumer(ctx, stream, cfg); err != nil {
			return nil, fmt.Errorf("consumer %s: update to configuration version %d (it has %d): %w", name, want, ConfigVersion(have), err)
		}
		return c, nil
	}
	return nil, fmt.Errorf("consumer %s: created and deleted again while it was being configured", name)
}
