package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// testTimeout bounds each test's calls on a loaded machine.
const testTimeout = 2 * time.Minute

// origin is a server and database holding a little of everything a
// backup takes, and what the test wrote there.
type origin struct {
	nc          *nats.Conn
	js          jetstream.JetStream
	databaseURL string
	// states are the KV_VIGIL_STATE values by key, with their revisions.
	states    map[string]string
	revisions map[string]uint64
}

// connect connects to a NATS server of the test's own.
func connect(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(testenv.StartNATS(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// newOrigin creates vigil's streams and buckets on a server of its own
// and writes desired states, a queue entry, results, audit records and
// alerts, and a durable consumer of VIGIL_ALERTS that acked two of three
// alerts; and a user with a command_log row in PostgreSQL.
func newOrigin(t *testing.T) *origin {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	nc, js := connect(t)
	o := &origin{nc: nc, js: js, databaseURL: testenv.Postgres(t), states: map[string]string{}, revisions: map[string]uint64{}}
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	if err := natsx.EnsureControl(ctx, js); err != nil {
		t.Fatal(err)
	}
	state, err := js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		t.Fatal(err)
	}
	for i, user := range []string{"alice", "bob", "alice"} {
		value := fmt.Sprintf(`{"user":%q,"revision":%d}`, user, i+1)
		rev, err := state.Put(ctx, contract.StateKey(user), []byte(value))
		if err != nil {
			t.Fatal(err)
		}
		o.states[contract.StateKey(user)], o.revisions[contract.StateKey(user)] = value, rev
	}
	queue, err := js.KeyValue(ctx, natsx.BucketQueue)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := queue.Put(ctx, "user.alice", []byte(`{"commands":[{"id":"queued-1"}]}`)); err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct{ subject, id string }{
		{contract.ResultSubject("alice", "cmd-1"), "alice:cmd-1"},
		{natsx.CommandLogSubject("alice"), "alice/cmd-1/succeeded/1"},
		{"vigil.alertin.alice.r1", "alert-1"},
		{"vigil.alertin.alice.r1", "alert-2"},
		{"vigil.alertin.alice.r1", "alert-3"},
	} {
		if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: m.subject, Data: []byte(`{"id":"` + m.id + `"}`),
			Header: nats.Header{nats.MsgIdHdr: []string{m.id}}}); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, contract.StreamAlerts, jetstream.ConsumerConfig{Durable: "projector", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for msg := range batch.Messages() {
		if err := msg.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	pool, err := db.NewPool(ctx, o.databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, _, err := db.NewUsers(pool).SeedUser(ctx, "test", "alice", json.RawMessage(`{"mode":"position-monitor","symbols":["BTC-USD"]}`), "coinbase"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO command_log (user_token, id, command, payload, status, operator, accepted_at, seq)
		VALUES ('alice', 'cmd-1', 'pause', '{}', 'succeeded', 'test', now(), 1)`); err != nil {
		t.Fatal(err)
	}
	return o
}

// takeBackup backs o up into a new directory.
func (o *origin) takeBackup(t *testing.T) (string, Manifest) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "backup")
	var log strings.Builder
	m, err := Backup(ctx, o.nc, dir, Options{DatabaseURL: o.databaseURL, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("backup:\n%s", log.String())
	return dir, m
}

// TestBackupAndRestore backs up a server and a database and restores them
// into fresh ones, once into an empty database and once into one the
// services already migrated: the KV values keep their revisions, the
// streams their messages, sequences and ids, the consumer its position,
// PostgreSQL its rows.
func TestBackupAndRestore(t *testing.T) {
	o := newOrigin(t)
	dir, m := o.takeBackup(t)

	taken := map[string]StreamEntry{}
	for _, s := range m.Streams {
		taken[s.Name] = s
	}
	for _, s := range Streams {
		if _, ok := taken[s.Name]; !ok {
			t.Errorf("manifest has no entry for %s", s.Name)
		}
	}
	if !taken["KV_"+natsx.BucketAlertState].Absent {
		t.Errorf("KV_%s (never created here) not recorded absent: %+v", natsx.BucketAlertState, taken["KV_"+natsx.BucketAlertState])
	}
	if e := taken[contract.StreamAlerts]; e.Messages != 3 || e.Consumers != 1 || e.Archive == 0 {
		t.Errorf("manifest VIGIL_ALERTS = %+v, want 3 messages, 1 consumer, an archive", e)
	}
	if e := taken["KV_"+contract.BucketState]; e.Messages != 3 || e.LastSeq != 3 {
		t.Errorf("manifest KV_VIGIL_STATE = %+v, want 3 messages (history 5), last sequence 3", e)
	}
	if m.Postgres == nil || m.Postgres.Bytes == 0 {
		t.Fatalf("manifest has no PostgreSQL dump: %+v", m.Postgres)
	}

	for name, databaseURL := range map[string]string{"into an empty database": testenv.EmptyPostgres(t), "into a migrated database": testenv.Postgres(t)} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			nc, js := connect(t)
			restored, err := Restore(ctx, nc, dir, RestoreOptions{DatabaseURL: databaseURL})
			if err != nil {
				t.Fatal(err)
			}
			if restored.Streams[contract.StreamAlerts] != 3 || restored.Rows["users"] != 1 || restored.Rows["command_log"] != 1 {
				t.Errorf("restored %+v, want 3 alerts, 1 user, 1 command_log row", restored)
			}
			checkRestoredNATS(ctx, t, o, js)
			checkRestoredPostgres(ctx, t, databaseURL)
		})
	}
}

// checkRestoredNATS compares the restored server with the origin.
func checkRestoredNATS(ctx context.Context, t *testing.T, o *origin, js jetstream.JetStream) {
	t.Helper()
	state, err := js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range o.states {
		e, err := state.Get(ctx, key)
		if err != nil {
			t.Fatalf("restored %s %s: %v", contract.BucketState, key, err)
		}
		if string(e.Value()) != want || e.Revision() != o.revisions[key] {
			t.Errorf("restored %s = %s at revision %d, want %s at %d", key, e.Value(), e.Revision(), want, o.revisions[key])
		}
	}
	for _, name := range []string{contract.StreamResults, natsx.StreamCommands, contract.StreamAlerts, "KV_" + natsx.BucketQueue} {
		before, err := o.js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		after, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("restored stream %s: %v", name, err)
		}
		b, a := before.CachedInfo(), after.CachedInfo()
		if a.State.Msgs != b.State.Msgs || a.State.LastSeq != b.State.LastSeq || a.Config.MaxAge != b.Config.MaxAge {
			t.Errorf("restored %s: %d messages, last %d, max age %v; want %d, %d, %v", name,
				a.State.Msgs, a.State.LastSeq, a.Config.MaxAge, b.State.Msgs, b.State.LastSeq, b.Config.MaxAge)
		}
	}
	alerts, err := js.Stream(ctx, contract.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	// The subject transform came back with the configuration.
	if msg, err := alerts.GetLastMsgForSubject(ctx, "vigil.alert.alice.r1"); err != nil || !strings.Contains(string(msg.Data), "alert-3") {
		t.Errorf("last alert of alice after restore: %v %v", msg, err)
	}
	// A replicated consumer reports an empty state until it has a leader.
	testenv.Eventually(t, 60*time.Second, func() error {
		cons, err := alerts.Consumer(ctx, "projector")
		if err != nil {
			return fmt.Errorf("restored consumer of VIGIL_ALERTS: %w", err)
		}
		if info := cons.CachedInfo(); info.AckFloor.Stream != 2 || info.NumPending != 1 {
			return fmt.Errorf("restored consumer of VIGIL_ALERTS: %+v; want ack floor 2 and 1 pending", info)
		}
		return nil
	})
	// docs/deploy.md says so: the server (2.15.3 on) rebuilds a restored
	// stream's duplicate window, so an id published again right after a
	// restore is refused as a duplicate, not stored twice.
	ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: "vigil.alertin.alice.r1", Data: []byte(`{}`), Header: nats.Header{nats.MsgIdHdr: []string{"alert-3"}}})
	if err != nil || !ack.Duplicate || ack.Sequence != 3 {
		t.Errorf("alert-3 published again after restore: %+v %v; want a duplicate of sequence 3 (the restored duplicate window)", ack, err)
	}
}

// checkRestoredPostgres checks the origin's rows in the restored database.
func checkRestoredPostgres(ctx context.Context, t *testing.T, databaseURL string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var settings, status string
	if err := conn.QueryRow(ctx, `SELECT settings::text FROM users WHERE identity_sub = 'alice'`).Scan(&settings); err != nil || !strings.Contains(settings, "BTC-USD") {
		t.Errorf("restored user alice: %q %v", settings, err)
	}
	if err := conn.QueryRow(ctx, `SELECT status FROM command_log WHERE user_token = 'alice' AND id = 'cmd-1'`).Scan(&status); err != nil || status != "succeeded" {
		t.Errorf("restored command_log row: %q %v", status, err)
	}
}

// TestRestoreChecksFirst: a restore that cannot complete is refused before
// it changes anything, naming what is in the way.
func TestRestoreChecksFirst(t *testing.T) {
	o := newOrigin(t)
	dir, _ := o.takeBackup(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	t.Run("a stream is already there", func(t *testing.T) {
		nc, js := connect(t)
		if _, err := js.CreateStream(ctx, natsx.AlertsStream); err != nil {
			t.Fatal(err)
		}
		_, err := Restore(ctx, nc, dir, RestoreOptions{DatabaseURL: testenv.EmptyPostgres(t)})
		if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "stream VIGIL_ALERTS is already on the server") {
			t.Fatalf("restore over an existing stream: %v, want ErrExists naming VIGIL_ALERTS", err)
		}
		if _, err := js.KeyValue(ctx, contract.BucketState); !errors.Is(err, jetstream.ErrBucketNotFound) {
			t.Errorf("a refused restore created %s: %v", contract.BucketState, err)
		}
	})
	t.Run("the database has users", func(t *testing.T) {
		nc, js := connect(t)
		_, err := Restore(ctx, nc, dir, RestoreOptions{DatabaseURL: o.databaseURL})
		if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "already holds 1 users") {
			t.Fatalf("restore into a database with users: %v, want ErrExists", err)
		}
		if names := streamNames(ctx, t, js); len(names) != 0 {
			t.Errorf("a refused restore created streams %v", names)
		}
	})
	t.Run("no database given", func(t *testing.T) {
		nc, _ := connect(t)
		if _, err := Restore(ctx, nc, dir, RestoreOptions{}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "DATABASE_URL") {
			t.Fatalf("restore without a database: %v, want ErrInvalid naming DATABASE_URL", err)
		}
	})
	t.Run("an unfinished backup", func(t *testing.T) {
		nc, _ := connect(t)
		unfinished := t.TempDir()
		if _, err := Restore(ctx, nc, unfinished, RestoreOptions{SkipPostgres: true}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "has no manifest.json") {
			t.Fatalf("restore of a directory without manifest: %v", err)
		}
	})
	t.Run("backup into a used directory", func(t *testing.T) {
		if _, err := Backup(ctx, o.nc, dir, Options{}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "is not empty") {
			t.Fatalf("backup into a non-empty directory: %v", err)
		}
	})
	t.Run("streams only, one replica", func(t *testing.T) {
		nc, js := connect(t)
		restored, err := Restore(ctx, nc, dir, RestoreOptions{SkipPostgres: true, Replicas: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(restored.Rows) != 0 || len(streamNames(ctx, t, js)) != len(restored.Streams) {
			t.Errorf("streams-only restore: %+v, streams on the server %v", restored, streamNames(ctx, t, js))
		}
	})
}

// streamNames lists the streams of a server.
func streamNames(ctx context.Context, t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	var names []string
	lister := js.StreamNames(ctx)
	for name := range lister.Name() {
		names = append(names, name)
	}
	if err := lister.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// TestTheNATSCLIReadsBackups: a stream of vigilctl's backup restores with
// `nats stream restore`, and one taken by `nats stream backup` with
// Restore, so either tool works on the other's backups.
func TestTheNATSCLIReadsBackups(t *testing.T) {
	natsCLI := findNATSCLI(t)
	o := newOrigin(t)
	dir, _ := o.takeBackup(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	nc, js := connect(t)
	cli(t, natsCLI, nc.ConnectedUrl(), "stream", "restore", "--no-progress", filepath.Join(dir, NATSDir, contract.StreamAlerts))
	if st, err := js.Stream(ctx, contract.StreamAlerts); err != nil || st.CachedInfo().State.Msgs != 3 {
		t.Fatalf("VIGIL_ALERTS restored by the nats CLI: %v", err)
	}

	cliDir := filepath.Join(t.TempDir(), "cli")
	cli(t, natsCLI, o.nc.ConnectedUrl(), "stream", "backup", "--no-progress", "--consumers", contract.StreamResults, filepath.Join(cliDir, NATSDir, contract.StreamResults))
	manifest := Manifest{Streams: []StreamEntry{{Name: contract.StreamResults, Dir: filepath.Join(NATSDir, contract.StreamResults)}}}
	if err := writeJSON(filepath.Join(cliDir, ManifestFile), manifest); err != nil {
		t.Fatal(err)
	}
	restored, err := Restore(ctx, nc, cliDir, RestoreOptions{})
	if err != nil || restored.Streams[contract.StreamResults] != 1 {
		t.Fatalf("the nats CLI's backup restored by vigilctl: %+v %v", restored, err)
	}
}

// cli runs the nats CLI against server and fails the test if it fails.
func cli(t *testing.T, natsCLI, server string, args ...string) {
	t.Helper()
	cmd := exec.Command(natsCLI, append([]string{"--server", server}, args...)...)
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nats %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// findNATSCLI finds the nats CLI (make deps installs it) on PATH or in
// $(go env GOPATH)/bin.
func findNATSCLI(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("nats"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, dir := range filepath.SplitList(strings.TrimSpace(string(out))) {
			if p := filepath.Join(dir, "bin", "nats"); isFile(p) {
				return p
			}
		}
	}
	t.Fatal("the nats CLI is not installed (not on PATH nor in $(go env GOPATH)/bin): run make deps")
	return ""
}

func isFile(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.Mode().IsRegular()
}
