package natsx

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
)

// StreamConfigs are the JetStream streams of the contract, VIGIL_CANDLES
// and VIGIL_INDICATORS partitioned into partitions each.
func StreamConfigs(partitions int) []jetstream.StreamConfig {
	streams := []jetstream.StreamConfig{
		{
			Name:        contract.StreamResults,
			Description: "vigil command results and progress events",
			Subjects:    []string{contract.ResultSubjects, contract.ProgressSubjects},
			Storage:     jetstream.FileStorage,
			MaxAge:      7 * 24 * time.Hour,
			Duplicates:  10 * time.Minute,
			// A result is read by subject with a direct get, the one
			// JetStream API a tenant's account imports (deploy/nats), for
			// its own subjects only.
			AllowDirect: true,
			Metadata:    Versioned(1),
		},
		{
			Name:              contract.StreamCandles,
			Description:       "vigil candle updates, feed to indicators",
			Subjects:          []string{contract.CandleSubjects},
			Storage:           jetstream.FileStorage,
			MaxAge:            24 * time.Hour,
			MaxMsgsPerSubject: 10_000,
			Duplicates:        2 * time.Minute,
			Metadata:          Versioned(1),
		},
		{
			Name:              contract.StreamIndicators,
			Description:       "vigil indicator updates, indicators to alerts",
			Subjects:          []string{contract.IndicatorSubjects},
			Storage:           jetstream.FileStorage,
			MaxAge:            time.Hour,
			MaxMsgsPerSubject: 1_000,
			Duplicates:        2 * time.Minute,
			Metadata:          Versioned(1),
		},
		AlertsStream,
	}
	for i := range streams {
		for _, p := range PartitionedStreams {
			if streams[i].Name == p.Stream {
				streams[i].SubjectTransform = p.Transform(partitions)
			}
		}
	}
	return streams
}

// AlertsStream is VIGIL_ALERTS, the record of alerts. vigil-alerts
// publishes on vigil.alertin.<user>.<ruleId> with Nats-Msg-Id = alert id;
// the stream stores the message as vigil.alert.<user>.<ruleId> (subject
// transform) unless the id is a duplicate inside the window, and
// republishes exactly what it stored on that subject, so core subscribers
// of vigil.alert.> see each alert id once. The stream listens only on the
// ingest subjects, so the republished messages do not loop back into it.
var AlertsStream = jetstream.StreamConfig{
	Name:             contract.StreamAlerts,
	Description:      "vigil alerts (ingest vigil.alertin.>, stored and republished as vigil.alert.>)",
	Subjects:         []string{contract.AlertIngestSubjects},
	SubjectTransform: &jetstream.SubjectTransformConfig{Source: contract.AlertIngestSubjects, Destination: contract.AlertSubjects},
	RePublish:        &jetstream.RePublish{Source: contract.AlertSubjects, Destination: contract.AlertSubjects},
	Storage:          jetstream.FileStorage,
	MaxAge:           30 * 24 * time.Hour,
	Duplicates:       time.Hour,
	Metadata:         Versioned(1),
}

// StateBucket is the KV bucket of users' desired state.
var StateBucket = jetstream.KeyValueConfig{
	Bucket:      contract.BucketState,
	Description: "vigil desired state per user (key user.<token>)",
	History:     5,
	Storage:     jetstream.FileStorage,
	Metadata:    Versioned(1),
}

// EnsureStreams is EnsurePartitionedStreams with DefaultPartitions.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, opts ...EnsureOption) error {
	return EnsurePartitionedStreams(ctx, js, DefaultPartitions, opts...)
}

// EnsurePartitionedStreams creates the contract's streams and KV bucket, or
// updates them in place to this configuration unless a newer vigil
// version already configured them (EnsureStream: they are left as they
// are, logged); running it again changes nothing. A stream from before
// partitioning gets its partitions; a partitioned stream with another
// partition count is refused (ErrPartitions), nothing is changed then.
func EnsurePartitionedStreams(ctx context.Context, js jetstream.JetStream, partitions int, opts ...EnsureOption) error {
	if err := ValidatePartitions(partitions); err != nil {
		return err
	}
	for _, p := range PartitionedStreams {
		if err := checkPartitionCount(ctx, js, p, partitions); err != nil {
			return err
		}
	}
	for _, cfg := range StreamConfigs(partitions) {
		if _, err := EnsureStream(ctx, js, cfg, opts...); err != nil {
			return err
		}
	}
	if _, err := EnsureKeyValue(ctx, js, StateBucket, opts...); err != nil {
		return err
	}
	return nil
}
