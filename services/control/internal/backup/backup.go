// Package backup takes and restores a backup of vigil's system of record:
// the JetStream streams and KV buckets that hold what nothing else can
// rebuild, and the PostgreSQL database. vigilctl backup and vigilctl
// restore are its command line (docs/deploy.md, "Backup and restore").
//
// A backup is a directory:
//
//	manifest.json                what was taken, written last
//	nats/<stream>/backup.json    the stream's configuration and state
//	nats/<stream>/stream.arc.s2  the server's snapshot (stream.tar.s2 from servers before 2.15)
//	postgres.dump                pg_dump --format=custom
//
// Each nats/<stream> directory is laid out as the nats CLI's `nats stream
// backup` writes it, so `nats stream restore` reads it and Restore reads
// the CLI's. Streams are taken one after the other (each consistent in
// itself, with its durable consumers), in the order of Streams, and
// PostgreSQL after them, so that a projection (command_log, alert_events)
// is never behind the position its consumer had in the backup.
package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/partition"
)

// Stream is one stream (or KV bucket, by its stream name KV_<bucket>) of
// the system of record and why it is backed up.
type Stream struct {
	Name string
	Why  string
}

// kv is the stream name of KV bucket name.
func kv(name string) string { return "KV_" + name }

// Streams are what a backup takes from JetStream, in this order: the KV
// buckets first, so that the streams taken after them are at least as new
// (a command acknowledged before the backup is either in the queue taken
// or its result in VIGIL_RESULTS taken later; an alert the rule memory
// remembers as fired is in VIGIL_ALERTS).
var Streams = []Stream{
	{kv(contract.BucketState), "each user's desired state (paused, mode, symbols, settings revision)"},
	{kv(natsx.BucketQueue), "each user's accepted, not yet settled commands and the ids of the last 10 minutes"},
	{kv(natsx.BucketUsers), "users and settings cached from PostgreSQL (commands are accepted while it is down)"},
	{kv(natsx.BucketAlertState), "each user's rule-engine memory: last closed bars and last fired bar of each rule (cooldowns)"},
	{contract.StreamResults, "command results and progress, 7 days (tenants read past results; a requester's id stays taken)"},
	{natsx.StreamCommands, "command audit records, 7 days, and the command-log consumer's position"},
	{contract.StreamAlerts, "the record of alerts, 30 days, with the alert_events projector's and every webhook's consumer"},
}

// Rebuilt are the streams and buckets vigil creates at start that a
// backup leaves out, and why nothing is lost without them.
var Rebuilt = []Stream{
	{contract.StreamCandles, "transport from the feed to indicators: Redis holds the candles, the exchange their history"},
	{contract.StreamIndicators, "transport from indicators to alerts: recomputed from the candles"},
	{kv(membership.Bucket), "heartbeats, each expires after a minute"},
	{kv(partition.LeaseBucket), "partition leases, claimed again by the running instances"},
}

// Files and directories of a backup.
const (
	ManifestFile = "manifest.json"
	NATSDir      = "nats"
	PostgresFile = "postgres.dump"
)

// Errors of Backup and Restore, wrapped with details.
var (
	// ErrInvalid reports options or a backup directory that cannot be
	// used; nothing was changed.
	ErrInvalid = errors.New("backup: invalid")
	// ErrExists reports a restore target that already holds the data:
	// restore goes into fresh servers only; nothing was changed.
	ErrExists = errors.New("backup: already exists")
	// ErrNATS reports a failure of the JetStream snapshot or restore API.
	ErrNATS = errors.New("backup: nats")
	// ErrPostgres reports a failure of pg_dump, pg_restore or PostgreSQL.
	ErrPostgres = errors.New("backup: postgres")
)

// Manifest describes a finished backup; a directory without one is a
// backup that did not finish.
type Manifest struct {
	// CreatedAt is when the backup started.
	CreatedAt time.Time `json:"created_at"`
	// NATSServer is the version of the server the streams came from.
	NATSServer string        `json:"nats_server"`
	Streams    []StreamEntry `json:"streams"`
	// Rebuilt names the streams and buckets the backup leaves out (see
	// Rebuilt), so that a reader of the manifest sees every stream vigil
	// has as either taken or rebuilt.
	Rebuilt []string `json:"rebuilt"`
	// Postgres is the dump, nil when the backup left PostgreSQL out.
	Postgres *PostgresEntry `json:"postgres,omitempty"`
	// Seconds is how long the backup took.
	Seconds float64 `json:"seconds"`
}

// StreamEntry is one stream of a backup.
type StreamEntry struct {
	Name string `json:"name"`
	// Absent: the server had no such stream (nothing to restore).
	Absent    bool   `json:"absent,omitempty"`
	Dir       string `json:"dir,omitempty"`
	Messages  uint64 `json:"messages"`
	Bytes     uint64 `json:"bytes"`
	FirstSeq  uint64 `json:"first_seq"`
	LastSeq   uint64 `json:"last_seq"`
	Consumers int    `json:"consumers"`
	// Archive is the size of the snapshot file.
	Archive int64 `json:"archive_bytes"`
}

// PostgresEntry is the PostgreSQL dump of a backup.
type PostgresEntry struct {
	File  string `json:"file"`
	Bytes int64  `json:"bytes"`
}

// Options of Backup.
type Options struct {
	// DatabaseURL is the PostgreSQL database to dump; empty leaves
	// PostgreSQL out.
	DatabaseURL string
	// Log gets one line per step; nil discards them.
	Log io.Writer
}

// Backup writes a backup of the system of record into dir, which must
// not exist or be empty. Streams the server does not have are recorded as
// absent. The manifest is written last.
func Backup(ctx context.Context, nc *nats.Conn, dir string, opts Options) (Manifest, error) {
	started := time.Now()
	log := logger(opts.Log)
	if err := emptyDir(dir); err != nil {
		return Manifest{}, err
	}
	m := Manifest{CreatedAt: started.UTC(), NATSServer: nc.ConnectedServerVersion()}
	for _, s := range Rebuilt {
		m.Rebuilt = append(m.Rebuilt, s.Name)
	}
	for _, s := range Streams {
		entry, err := snapshotStream(ctx, nc, s.Name, filepath.Join(dir, NATSDir, s.Name))
		if err != nil {
			return Manifest{}, err
		}
		if entry.Absent {
			log("%-22s not on the server, skipped", s.Name)
		} else {
			log("%-22s %8d messages %10s %2d consumers  → %s", s.Name, entry.Messages, bytesText(entry.Bytes), entry.Consumers, filepath.Join(dir, entry.Dir))
		}
		m.Streams = append(m.Streams, entry)
	}
	if opts.DatabaseURL != "" {
		pe, err := dumpPostgres(ctx, opts.DatabaseURL, filepath.Join(dir, PostgresFile))
		if err != nil {
			return Manifest{}, err
		}
		log("%-22s pg_dump %10s  → %s", "postgres", bytesText(uint64(pe.Bytes)), filepath.Join(dir, pe.File))
		m.Postgres = &pe
	}
	m.Seconds = time.Since(started).Seconds()
	if err := writeJSON(filepath.Join(dir, ManifestFile), m); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// RestoreOptions of Restore.
type RestoreOptions struct {
	// DatabaseURL is the PostgreSQL database to restore into; empty leaves
	// PostgreSQL out (a backup with a dump then needs SkipPostgres).
	DatabaseURL string
	// SkipPostgres restores the streams only.
	SkipPostgres bool
	// Replicas, when positive, replaces each stream's replica count (a
	// backup of a three-node cluster restored into one server needs 1).
	Replicas int
	// Log gets one line per step; nil discards them.
	Log io.Writer
}

// Restored is what Restore put back.
type Restored struct {
	// Streams are the restored streams' message counts, by name.
	Streams map[string]uint64
	// Rows are the restored tables' row counts, by table; nil without
	// PostgreSQL.
	Rows map[string]int64
}

// Restore puts the backup in dir back into a server that has none of its
// streams and a database that has no users (empty, or only migrated). It
// checks everything first and changes nothing when a check fails. Start
// the services after it: they create the streams the backup leaves out
// and rebuild Redis (docs/deploy.md).
func Restore(ctx context.Context, nc *nats.Conn, dir string, opts RestoreOptions) (Restored, error) {
	log := logger(opts.Log)
	m, err := ReadManifest(dir)
	if err != nil {
		return Restored{}, err
	}
	if opts.Replicas < 0 {
		return Restored{}, fmt.Errorf("%w: replicas %d is negative", ErrInvalid, opts.Replicas)
	}
	withPostgres := m.Postgres != nil && !opts.SkipPostgres
	if withPostgres && opts.DatabaseURL == "" {
		return Restored{}, fmt.Errorf("%w: the backup holds a PostgreSQL dump: give the database to restore it into (DATABASE_URL), or leave PostgreSQL out", ErrInvalid)
	}
	var plans []restorePlan
	for _, s := range m.Streams {
		if s.Absent {
			continue
		}
		p, err := planRestore(ctx, nc, filepath.Join(dir, s.Dir), s.Name, opts.Replicas)
		if err != nil {
			return Restored{}, err
		}
		plans = append(plans, p)
	}
	if withPostgres {
		if err := checkEmptyDatabase(ctx, opts.DatabaseURL); err != nil {
			return Restored{}, err
		}
		if err := checkDumpFile(filepath.Join(dir, m.Postgres.File)); err != nil {
			return Restored{}, err
		}
	}
	out := Restored{Streams: map[string]uint64{}}
	for _, p := range plans {
		msgs, err := restoreStream(ctx, nc, p)
		if err != nil {
			return out, err
		}
		log("%-22s %8d messages restored", p.name, msgs)
		out.Streams[p.name] = msgs
	}
	if withPostgres {
		rows, err := restorePostgres(ctx, opts.DatabaseURL, filepath.Join(dir, m.Postgres.File))
		if err != nil {
			return out, err
		}
		log("%-22s pg_restore: %d users, %d command_log rows, %d alert_events rows", "postgres", rows["users"], rows["command_log"], rows["alert_events"])
		out.Rows = rows
	}
	return out, nil
}

// ReadManifest reads the manifest of the backup in dir.
func ReadManifest(dir string) (Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return Manifest{}, fmt.Errorf("%w: %s has no %s: not a backup, or one that did not finish", ErrInvalid, dir, ManifestFile)
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Manifest{}, fmt.Errorf("%w: %s: %w", ErrInvalid, filepath.Join(dir, ManifestFile), err)
	}
	return m, nil
}

// emptyDir creates dir, or accepts it when it exists and is empty.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return os.MkdirAll(dir, 0o700)
	case err != nil:
		return fmt.Errorf("%w: backup directory: %w", ErrInvalid, err)
	case len(entries) > 0:
		return fmt.Errorf("%w: backup directory %s is not empty: give a new one", ErrInvalid, dir)
	}
	return nil
}

// writeJSON writes v indented into path.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o600)
}

// logger is a printf to w, or nothing when w is nil.
func logger(w io.Writer) func(format string, args ...any) {
	return func(format string, args ...any) {
		if w != nil {
			fmt.Fprintf(w, format+"\n", args...)
		}
	}
}

// bytesText is n in B, KiB, MiB or GiB.
func bytesText(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGT"[exp])
}
