package ctl

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"vigil.dev/services/control/internal/backup"
)

// newBackupCmd builds vigilctl backup DIR.
func newBackupCmd(sys IO, conn *connFlags) *cobra.Command {
	var noPostgres bool
	cmd := &cobra.Command{
		Use:   "backup DIR",
		Short: "Back up the system of record: vigil's JetStream streams and KV buckets, and PostgreSQL (pg_dump)",
		Long: `Back up the system of record into DIR (new or empty): the JetStream
streams and KV buckets that nothing rebuilds (desired states, command queue
and results, audit records, alerts and the rules' memory, with their durable
consumers), then PostgreSQL with pg_dump (DATABASE_URL). The services keep
running. Candles, indicators and Redis are rebuilt after a restore and are
not taken. docs/deploy.md, "Backup and restore".`,
		Example: `  DATABASE_URL=postgres://vigil@127.0.0.1:5432/vigil vigilctl backup /var/backups/vigil/$(date +%F)
  vigilctl backup --no-postgres /tmp/vigil-streams`,
		Args: exactArgs(1, "the backup directory"),
		RunE: func(cmd *cobra.Command, args []string) error {
			url := sys.Getenv("DATABASE_URL")
			if url == "" && !noPostgres {
				return usageErrorf("backup dumps PostgreSQL: set DATABASE_URL, or pass --no-postgres")
			}
			if noPostgres {
				url = ""
			}
			nc, err := conn.connect(cmd.Context(), sys.Getenv)
			if err != nil {
				return err
			}
			defer nc.Close()
			m, err := backup.Backup(cmd.Context(), nc, args[0], backup.Options{DatabaseURL: url, Log: sys.Stdout})
			if err != nil {
				return backupError(err)
			}
			taken := 0
			for _, s := range m.Streams {
				if !s.Absent {
					taken++
				}
			}
			what := fmt.Sprintf("%d streams", taken)
			if m.Postgres != nil {
				what += " and PostgreSQL"
			}
			fmt.Fprintf(sys.Stdout, "backup complete: %s (%s) in %s\n", args[0], what, time.Duration(m.Seconds*float64(time.Second)).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().BoolVar(&noPostgres, "no-postgres", false, "take the streams only")
	return cmd
}

// newRestoreCmd builds vigilctl restore DIR.
func newRestoreCmd(sys IO, conn *connFlags) *cobra.Command {
	var noPostgres bool
	var replicas int
	cmd := &cobra.Command{
		Use:   "restore DIR",
		Short: "Restore a backup into a NATS server without vigil's streams and an empty PostgreSQL database",
		Long: `Restore the backup in DIR (vigilctl backup's) before the services first
start: its streams into a NATS server that has none of them, its PostgreSQL
dump (DATABASE_URL) into a database without users (empty, or only
migrated), in one transaction. Everything is checked first; when a check
fails nothing is changed. Then start the services: they create the other
streams and rebuild Redis. docs/deploy.md, "Backup and restore".`,
		Example: `  DATABASE_URL=postgres://vigil@10.0.0.5:5432/vigil vigilctl --server nats://10.0.0.1:4222 restore /var/backups/vigil/2026-12-01
  vigilctl restore --replicas 1 --no-postgres /tmp/vigil-streams`,
		Args: exactArgs(1, "the backup directory"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if replicas < 0 {
				return usageErrorf("--replicas: must not be negative")
			}
			m, err := backup.ReadManifest(args[0])
			if err != nil {
				return backupError(err)
			}
			url := sys.Getenv("DATABASE_URL")
			if m.Postgres != nil && url == "" && !noPostgres {
				return usageErrorf("the backup holds a PostgreSQL dump: set DATABASE_URL to the database to restore it into, or pass --no-postgres")
			}
			nc, err := conn.connect(cmd.Context(), sys.Getenv)
			if err != nil {
				return err
			}
			defer nc.Close()
			started := time.Now()
			restored, err := backup.Restore(cmd.Context(), nc, args[0], backup.RestoreOptions{
				DatabaseURL: url, SkipPostgres: noPostgres, Replicas: replicas, Log: sys.Stdout})
			if err != nil {
				return backupError(err)
			}
			what := fmt.Sprintf("%d streams", len(restored.Streams))
			if restored.Rows != nil {
				what += " and PostgreSQL"
			}
			fmt.Fprintf(sys.Stdout, "restore complete: %s from %s (taken %s) in %s; now start the services\n", what, args[0],
				m.CreatedAt.Format(time.RFC3339), time.Since(started).Round(time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&noPostgres, "no-postgres", false, "restore the streams only")
	f.IntVar(&replicas, "replicas", 0, "replicas of each restored stream (default: as backed up; 1 to restore a cluster's backup into one server)")
	return cmd
}

// backupError marks the backup package's refusals (bad directory, data
// already there) as rejections: nothing was changed.
func backupError(err error) error {
	if errors.Is(err, backup.ErrInvalid) || errors.Is(err, backup.ErrExists) {
		return fmt.Errorf("%w: %w", ErrRejected, err)
	}
	return err
}
