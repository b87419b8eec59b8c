//go:build drill

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

// Users of the backup drill.
const (
	drillAlerts = "drill-alerts" // alerts fire about once a wall second
	drillPaused = "drill-paused" // paused before the backup, stays paused
	drillSwitch = "drill-switch" // switched to scalper-macdv before the backup
)

// drillPauseID is the id the requester chose for drillPaused's pause.
const drillPauseID = "drill-pause-1"

// drillServers are a NATS server with a file store, a Redis and a
// PostgreSQL of the drill's own, all their data under dir.
type drillServers struct {
	dir   string
	nats  *localstack.NATS
	redis *localstack.Redis
	pg    *localstack.Postgres
}

// startDrillServers starts fresh servers with their data in dir.
func startDrillServers(t *testing.T, dir string) *drillServers {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d := &drillServers{dir: dir}
	var err error
	if d.nats, err = localstack.StartNATS(ctx, localstack.Options{Dir: filepath.Join(dir, "nats")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.nats.Stop() })
	if d.redis, err = localstack.StartRedis(ctx, localstack.Options{Dir: filepath.Join(dir, "redis"), Persist: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.redis.Stop() })
	if d.pg, err = localstack.StartPostgres(ctx, localstack.Options{Dir: filepath.Join(dir, "postgres")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.pg.Stop() })
	return d
}

// destroy stops the servers and deletes all their data.
func (d *drillServers) destroy(t *testing.T) {
	t.Helper()
	for name, stop := range map[string]func() error{"nats": d.nats.Stop, "redis": d.redis.Stop, "postgres": d.pg.Stop} {
		if err := stop(); err != nil {
			t.Fatalf("stop %s: %v", name, err)
		}
	}
	if err := os.RemoveAll(d.dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.dir); !os.IsNotExist(err) {
		t.Fatalf("%s is still there: %v", d.dir, err)
	}
}

// stack is a command stack (test clients included) on the servers.
func (d *drillServers) stack(t *testing.T) *cmdStack {
	t.Helper()
	stack := testenv.StackOn(t, d.nats.URL(), d.redis.URL(), d.pg.URL())
	stack.Env = append(stack.Env, "VIGIL_FEED_SOURCE=sim")
	return cmdStackOf(t, stack)
}

// drillRecord is what the drill expects back after the restore: taken
// before the backup started, so all of it is in the backup.
type drillRecord struct {
	users    map[string]string // identity_sub → settings
	states   map[string]string // user → desired state (raw KV value)
	revs     map[string]uint64 // user → KV revision of the state
	commands map[string]string // <user>/<id> → final status (result and command_log)
	audit    []string          // Nats-Msg-Id of every audit record in VIGIL_COMMANDS
	alerts   []string          // alert ids in VIGIL_ALERTS
	memory   map[string]bool   // users with rule-engine memory in VIGIL_ALERT_STATE
}

// TestBackupRestoreDrill backs up a running vigil (NATS with a file
// store, Redis, PostgreSQL, one instance of each service on the
// simulator, users with commands run and alerts fired) with vigilctl
// backup, destroys it (processes stopped, every data directory deleted),
// restores into fresh servers with vigilctl restore, starts the services
// and checks that users, desired states, command history (command_log,
// results, audit records, the ids the requesters chose) and alerts
// (VIGIL_ALERTS, alert_events, the rules' memory) are back and that the
// services converge: candles and indicators rebuilt in the empty Redis,
// alerts fire again, the paused user stays paused, a new command succeeds.
// docs/deploy.md, "Backup and restore"; make test-drill.
func TestBackupRestoreDrill(t *testing.T) {
	began := time.Now()
	first := startDrillServers(t, filepath.Join(t.TempDir(), "first"))
	migrate(t, first.pg.URL())
	s := first.stack(t)
	s.seed(t, drillAlerts, liveAlertSettings)
	s.seed(t, drillPaused, `{"mode":"position-monitor","symbols":["BTC-USD"]}`)
	s.seed(t, drillSwitch, switchSettings)
	procs := s.startAll(t, 1, drillAlerts, drillPaused, drillSwitch)
	t.Logf("first stack up in %v", time.Since(began).Round(time.Millisecond))

	pause := s.send(t, drillPaused, contract.CmdPause, "{}", drillPauseID)
	if !pause.Accepted {
		t.Fatalf("pause: %s", ackString(pause))
	}
	if res := s.waitResult(t, drillPaused, drillPauseID, 60*time.Second); res.Status != contract.StatusSucceeded {
		t.Fatalf("pause: %s", resultString(res))
	}
	switched := s.run(t, drillSwitch, contract.CmdSwitchMode, `{"mode":"scalper-macdv"}`)
	reload := s.run(t, drillAlerts, contract.CmdReloadSettings, "{}")
	s.finalRows(t, drillPaused, drillPauseID)
	s.finalRows(t, drillSwitch, switched.ID)
	s.finalRows(t, drillAlerts, reload.ID)
	testenv.WaitFor(t, 60*time.Second, "3 alerts of "+drillAlerts+" in alert_events", func() bool {
		return len(s.alertEvents(t, drillAlerts)) >= 3
	})
	want := s.record(t, drillAlerts, drillPaused, drillSwitch)
	t.Logf("before the backup (%v): %d commands, %d audit records, %d alerts", time.Since(began).Round(time.Millisecond),
		len(want.commands), len(want.audit), len(want.alerts))

	dir := filepath.Join(t.TempDir(), "backup")
	out := runVigilctl(t, s, "backup", dir)
	checkInventory(t, s, dir)
	t.Logf("vigilctl backup (services running):\n%s", out)
	if !strings.Contains(out, "backup complete") {
		t.Fatalf("vigilctl backup did not say it completed:\n%s", out)
	}

	for _, svc := range services {
		for _, p := range procs[svc] {
			p.Stop()
		}
	}
	first.destroy(t)
	t.Logf("first stack destroyed at %v", time.Since(began).Round(time.Millisecond))

	second := startDrillServers(t, filepath.Join(t.TempDir(), "second"))
	r := second.stack(t)
	out = runVigilctl(t, r, "restore", dir)
	t.Logf("vigilctl restore:\n%s", out)
	restoredAt := time.Now()
	r.accounts = s.accounts // the users' ids came back with PostgreSQL
	r.startAll(t, 1, drillAlerts, drillPaused, drillSwitch)
	t.Logf("second stack up at %v", time.Since(began).Round(time.Millisecond))

	checkRecordBack(t, r, want)
	checkConverged(t, r, want)
	t.Logf("restored and converged %v after the restore, drill %v", time.Since(restoredAt).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}

// migrate applies vigil's migrations to the database at url.
func migrate(t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := db.NewPool(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := db.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
}

// runVigilctl runs the built vigilctl against the stack's NATS server and
// PostgreSQL database, as an operator would, and fails the test unless it
// succeeds.
func runVigilctl(t *testing.T, s *cmdStack, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.Bin("vigilctl"), args...)
	cmd.Env = append(os.Environ(), "NATS_URL="+s.NATSURL, "DATABASE_URL="+s.DatabaseURL, "XDG_CONFIG_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("vigilctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// checkInventory fails the test when the running stack has a stream that
// the backup in dir neither took nor names as rebuilt (its manifest's
// streams and rebuilt): a new stream must be given a place in control's
// backup.Streams or backup.Rebuilt.
func checkInventory(t *testing.T, s *cmdStack, dir string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Streams []struct {
			Name string `json:"name"`
		} `json:"streams"`
		Rebuilt []string `json:"rebuilt"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, st := range m.Streams {
		known[st.Name] = true
	}
	for _, name := range m.Rebuilt {
		known[name] = true
	}
	names := s.js.StreamNames(ctx)
	for name := range names.Name() {
		if !known[name] {
			t.Errorf("stream %s is neither backed up (backup.Streams) nor named rebuilt (backup.Rebuilt)", name)
		}
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
}

// alertEvents are the alert ids of user in alert_events.
func (s *cmdStack) alertEvents(t *testing.T, user string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT id FROM alert_events WHERE user_token = $1 ORDER BY id`, user)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// msgIDs are the Nats-Msg-Id headers of the messages of stream on filter.
func (s *cmdStack) msgIDs(t *testing.T, stream, filter string) []string {
	t.Helper()
	var ids []string
	for _, m := range s.published(t, stream, filter, 0) {
		ids = append(ids, m.Headers().Get(nats.MsgIdHdr))
	}
	slices.Sort(ids)
	return ids
}

// record reads what the drill expects back for users.
func (s *cmdStack) record(t *testing.T, users ...string) drillRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := drillRecord{users: map[string]string{}, states: map[string]string{}, revs: map[string]uint64{},
		commands: map[string]string{}, memory: map[string]bool{}}
	memory, err := s.js.KeyValue(ctx, natsx.BucketAlertState)
	if err != nil {
		t.Fatal(err)
	}
	for _, user := range users {
		var settings string
		if err := s.pool.QueryRow(ctx, `SELECT settings::text FROM users WHERE identity_sub = $1`, user).Scan(&settings); err != nil {
			t.Fatal(err)
		}
		r.users[user] = settings
		r.revs[user], r.states[user] = s.stateEntry(t, user)
		for _, row := range s.commandRows(t, user) {
			res, ok := s.result(user, row.ID)
			if !ok || string(res.Status) != row.Status {
				t.Fatalf("command %s of %s: command_log says %s, its result %v %s", row.ID, user, row.Status, ok, res.Status)
			}
			r.commands[user+"/"+row.ID] = row.Status
		}
		r.audit = append(r.audit, s.msgIDs(t, natsx.StreamCommands, natsx.CommandLogSubject(user))...)
		r.alerts = append(r.alerts, s.msgIDs(t, contract.StreamAlerts, "vigil.alert."+user+".>")...)
		if _, err := memory.Get(ctx, contract.StateKey(user)); err == nil {
			r.memory[user] = true
		}
	}
	if len(r.commands) < 3 || len(r.alerts) < 3 || !r.memory[drillAlerts] {
		t.Fatalf("too little to restore: %d commands, %d alerts, rule memory of %v", len(r.commands), len(r.alerts), r.memory)
	}
	return r
}

// checkRecordBack checks that everything of want is in the restored stack.
func checkRecordBack(t *testing.T, r *cmdStack, want drillRecord) {
	t.Helper()
	got := r.record(t, drillAlerts, drillPaused, drillSwitch)
	for user, settings := range want.users {
		if got.users[user] != settings {
			t.Errorf("settings of %s after the restore: %s, want %s", user, got.users[user], settings)
		}
		if got.states[user] != want.states[user] || got.revs[user] != want.revs[user] {
			t.Errorf("desired state of %s after the restore: revision %d %s, want revision %d %s", user, got.revs[user], got.states[user], want.revs[user], want.states[user])
		}
	}
	for cmd, status := range want.commands {
		if got.commands[cmd] != status {
			t.Errorf("command %s after the restore: %q in command_log and results, want %q", cmd, got.commands[cmd], status)
		}
	}
	for name, ids := range map[string][]string{"audit record": want.audit, "alert": want.alerts} {
		have := map[string]bool{}
		for _, id := range append(got.audit, got.alerts...) {
			have[id] = true
		}
		for _, id := range ids {
			if !have[id] {
				t.Errorf("%s %s is missing after the restore", name, id)
			}
		}
	}
	for user := range want.memory {
		if !got.memory[user] {
			t.Errorf("the rule-engine memory of %s is missing after the restore", user)
		}
	}
	// alert_events catches up from the restored consumer position.
	testenv.WaitFor(t, 60*time.Second, "every alert of the backup in alert_events", func() bool {
		have := map[string]bool{}
		for _, user := range []string{drillAlerts, drillPaused, drillSwitch} {
			for _, id := range r.alertEvents(t, user) {
				have[id] = true
			}
		}
		for _, id := range want.alerts {
			if !have[id] {
				return false
			}
		}
		return true
	})
}

// checkConverged checks that the restored services work: Redis, empty
// after the restore, gets candles and indicators again; new alerts fire;
// the paused user stays paused until a new resume, which succeeds; the id
// a requester chose before the backup is still taken.
func checkConverged(t *testing.T, r *cmdStack, want drillRecord) {
	t.Helper()
	known := map[string]bool{}
	for _, id := range want.alerts {
		known[id] = true
	}
	switchBars := r.account(t, drillSwitch).series(drillSwitch, "BTC-USD", contract.TF1m)
	testenv.WaitFor(t, 90*time.Second, "candles and macdv of "+drillSwitch+" and a new alert of "+drillAlerts, func() bool {
		fresh := 0
		for _, id := range r.msgIDs(t, contract.StreamAlerts, "vigil.alert."+drillAlerts+".>") {
			if !known[id] {
				fresh++
			}
		}
		return fresh > 0 && r.lastCandle(t, switchBars).Start > 0 && len(r.indicator(t, switchBars, "macdv_12_26_9")) > 0
	})

	paused := r.account(t, drillPaused)
	if st, _, _ := r.state(drillPaused); !st.Paused {
		t.Errorf("%s is not paused after the restore: %+v", drillPaused, st)
	}
	if keys := r.keys(t, "candles:"+itoa(paused.UserID)+":*"); len(keys) != 0 {
		t.Errorf("candles of the paused %s written after the restore: %v", drillPaused, keys)
	}
	reused := r.send(t, drillPaused, contract.CmdResume, "{}", drillPauseID)
	if reused.Accepted || reused.Error == nil || reused.Error.Code != contract.CodeConflict {
		t.Errorf("resume with the id of the pause before the backup: %s, want conflict", ackString(reused))
	}
	r.run(t, drillPaused, contract.CmdResume, "{}")
	pausedBars := paused.series(drillPaused, "BTC-USD", contract.TF1m)
	testenv.WaitFor(t, 60*time.Second, "candles of "+drillPaused+" after its resume", func() bool {
		return r.lastCandle(t, pausedBars).Start > 0
	})
}
