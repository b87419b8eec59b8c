package natsx

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Names of vigil-control's own buckets and stream (not part of the
// contract; docs/design.md "Control").
const (
	// BucketQueue holds each user's command queue in one entry
	// (key user.<token>), written with compare-and-set: the system of
	// record of accepted commands.
	BucketQueue = "VIGIL_QUEUE"
	// BucketUsers caches users and their settings from PostgreSQL
	// (key user.<token>), so commands are accepted while it is down.
	BucketUsers = "VIGIL_USERS"
	// StreamCommands carries the audit records of commands
	// (vigil.ctl.log.<user>) that the projector writes to command_log.
	StreamCommands = "VIGIL_COMMANDS"
	// CommandLogSubjects are the subjects of StreamCommands.
	CommandLogSubjects = "vigil.ctl.log.>"
	// BucketAlertState holds vigil-alerts' rule-engine memory per user
	// (key user.<token>: the last closed bars and the last fired bar of
	// every rule, hence the cooldowns). Named here because vigilctl
	// backup takes it too.
	BucketAlertState = "VIGIL_ALERT_STATE"
)

// CommandLogSubject is vigil.ctl.log.<user>.
func CommandLogSubject(user string) string { return "vigil.ctl.log." + user }

// QueueBucket is the KV bucket of the users' command queues.
var QueueBucket = jetstream.KeyValueConfig{
	Bucket:      BucketQueue,
	Description: "vigil-control: each user's queued and running commands and recent ids (key user.<token>)",
	History:     1,
	Storage:     jetstream.FileStorage,
	Metadata:    Versioned(1),
}

// UsersBucket is the KV bucket of cached users.
var UsersBucket = jetstream.KeyValueConfig{
	Bucket:      BucketUsers,
	Description: "vigil-control: users and settings cached from PostgreSQL (key user.<token>)",
	History:     1,
	Storage:     jetstream.FileStorage,
	Metadata:    Versioned(1),
}

// CommandsStream is the stream of command audit records; it keeps them
// for a week, so command_log catches up after a PostgreSQL outage of up
// to that long.
var CommandsStream = jetstream.StreamConfig{
	Name:        StreamCommands,
	Description: "vigil-control: command audit records, projected into PostgreSQL command_log",
	Subjects:    []string{CommandLogSubjects},
	Storage:     jetstream.FileStorage,
	MaxAge:      7 * 24 * time.Hour,
	Duplicates:  10 * time.Minute,
	Metadata:    Versioned(1),
}

// EnsureControl creates vigil-control's buckets and stream or updates them
// in place, unless a newer vigil version configured them (EnsureStream);
// running it again changes nothing. Like EnsureStreams, give it a
// JetStream of WithReplicas so they are replicated like the others.
func EnsureControl(ctx context.Context, js jetstream.JetStream, opts ...EnsureOption) error {
	for _, cfg := range []jetstream.KeyValueConfig{QueueBucket, UsersBucket} {
		if _, err := EnsureKeyValue(ctx, js, cfg, opts...); err != nil {
			return err
		}
	}
	if _, err := EnsureStream(ctx, js, CommandsStream, opts...); err != nil {
		return err
	}
	return nil
}
