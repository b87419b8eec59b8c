package e2e

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// Exit codes of vigilctl (docs/operators.md).
const (
	exitOK       = 0
	exitRejected = 2
)

// tenantCtl runs the vigilctl binary against s with only env and s's
// URLs in its environment, and returns its exit code and output.
func (s *cmdStack) tenantCtl(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	base := map[string]string{"NATS_URL": s.NATSURL, "DATABASE_URL": s.DatabaseURL, "REDIS_URL": s.RedisURL, "USER": "test"}
	for k, v := range env {
		base[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.Bin("vigilctl"), args...)
	cmd.Env = []string{}
	for k, v := range base {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	code := 0
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("vigilctl %s: %v", strings.Join(args, " "), err)
		}
		code = exit.ExitCode()
	}
	t.Logf("vigilctl %s: exit %d\n%s", strings.Join(args, " "), code, out.String())
	return code, out.String()
}

// subjectsOf are the stored subjects of every stream that have user as a
// token, with their message counts.
func (s *cmdStack) subjectsOf(t *testing.T, user string) map[string]uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	found := map[string]uint64{}
	names := s.js.StreamNames(ctx)
	for name := range names.Name() {
		st, err := s.js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(">"))
		if err != nil {
			t.Fatal(err)
		}
		for subject, n := range info.State.Subjects {
			for _, tok := range strings.Split(subject, ".") {
				if tok == user {
					found[name+" "+subject] += n
				}
			}
		}
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	return found
}

// redisKeys counts the keys of the user with id userID.
func (s *cmdStack) redisKeys(t *testing.T, userID int64) int {
	t.Helper()
	n := 0
	for _, p := range []string{"candles:", "indicator:"} {
		iter := s.rdb.Scan(context.Background(), 0, p+strconv.FormatInt(userID, 10)+":*", 1000).Iterator()
		for iter.Next(context.Background()) {
			n++
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// TestTenantLifecycle adds a tenant with vigilctl next to a running user,
// lets its data flow into every stream, Redis and its webhook consumer,
// then deletes it: nothing of it remains in any stream (by subject), in
// Redis (SCAN), in the KV buckets or the users table, its audit rows are
// marked deleted_at, and the other user is untouched. Settings over a
// limit and unknown tenants are refused, and a second delete sweeps again.
func TestTenantLifecycle(t *testing.T) {
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	t.Cleanup(hook.Close)
	s := newCmdStack(t)
	bob, _ := s.seed(t, "bob", liveAlertSettings)
	s.startAll(t, 1, "bob")

	dir := t.TempDir()
	tooMany := filepath.Join(dir, "too-many.json")
	if err := os.WriteFile(tooMany, []byte(`{"mode":"position-monitor","symbols":["BTC-USD","ETH-USD","SOL-USD"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := s.tenantCtl(t, map[string]string{"VIGIL_MAX_SYMBOLS": "2"}, "tenant", "add", "carol", "--settings", tooMany)
	if code != exitRejected || !strings.Contains(out, "symbols") || !strings.Contains(out, "the limit is 2") {
		t.Errorf("settings over the symbol limit: exit %d, want %d naming the limit", code, exitRejected)
	}
	if _, err := s.users.UserByToken(context.Background(), "carol"); err == nil {
		t.Fatal("a refused tenant was created")
	}
	settings := filepath.Join(dir, "carol.json")
	doc := strings.Replace(liveAlertSettings, `"mode"`, `"webhook":{"url":"`+hook.URL+`"},"mode"`, 1)
	if err := os.WriteFile(settings, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out = s.tenantCtl(t, nil, "tenant", "add", "carol", "--settings", settings)
	if code != exitOK || !strings.Contains(out, "reload-settings for carol succeeded") || !strings.Contains(out, "limits: {max_connections: 16") {
		t.Fatalf("tenant add: exit %d", code)
	}
	carol, err := s.users.UserByToken(context.Background(), "carol")
	if err != nil {
		t.Fatal(err)
	}
	code, out = s.tenantCtl(t, nil, "tenant", "show", "carol")
	if code != exitOK || !strings.Contains(out, "symbols  1 of 50") || !strings.Contains(out, "commands 600 per minute") {
		t.Errorf("tenant show: exit %d", code)
	}
	s.run(t, "carol", contract.CmdForceBackfill, `{"symbol":"BTC-USD","timeframes":["1m"]}`)
	// Carol's data in every stream she has subjects in, Redis and her
	// webhook consumer.
	testenv.WaitFor(t, 90*time.Second, "carol's messages in every stream and her webhook consumer", func() bool {
		streams := map[string]bool{}
		for k := range s.subjectsOf(t, "carol") {
			streams[strings.Fields(k)[0]] = true
		}
		_, cerr := s.js.Consumer(context.Background(), contract.StreamAlerts, "vigil-webhook-carol")
		for _, want := range []string{contract.StreamResults, contract.StreamCandles, contract.StreamIndicators, contract.StreamAlerts,
			"VIGIL_COMMANDS", "KV_VIGIL_STATE", "KV_VIGIL_QUEUE", "KV_VIGIL_USERS"} {
			if !streams[want] {
				return false
			}
		}
		return cerr == nil && s.redisKeys(t, carol.ID) > 0
	})
	bobBefore := s.count(t, contract.StreamCandles, "vigil.candle.p.*.bob.>", 0)
	bobKeys := s.redisKeys(t, bob.UserID)

	code, out = s.tenantCtl(t, nil, "tenant", "delete", "dave")
	if code != exitRejected || !strings.Contains(out, `unknown tenant "dave"`) {
		t.Errorf("delete of an unknown tenant: exit %d, want %d naming it", code, exitRejected)
	}
	code, out = s.tenantCtl(t, nil, "tenant", "delete", "carol")
	// Her webhook consumer is deleted by vigilctl or, once her desired
	// state is purged, by vigil-alerts first: either way it is gone below.
	if code != exitOK || !strings.Contains(out, "pause for carol succeeded") {
		t.Fatalf("tenant delete: exit %d", code)
	}
	if left := s.subjectsOf(t, "carol"); len(left) > 0 {
		t.Errorf("left in the streams: %v", left)
	}
	if n := s.redisKeys(t, carol.ID); n != 0 {
		t.Errorf("%d Redis keys of carol left", n)
	}
	if _, _, ok := s.state("carol"); ok {
		t.Error("carol's desired state is left")
	}
	if _, err := s.js.Consumer(context.Background(), contract.StreamAlerts, "vigil-webhook-carol"); err == nil {
		t.Error("carol's webhook consumer is left")
	}
	if _, err := s.users.UserByToken(context.Background(), "carol"); err == nil {
		t.Error("carol's users row is left")
	}
	var unmarked, marked int
	if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE deleted_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL)
		FROM command_log WHERE user_token = 'carol'`).Scan(&unmarked, &marked); err != nil {
		t.Fatal(err)
	}
	if unmarked != 0 || marked < 3 {
		t.Errorf("carol's command_log rows: %d unmarked, %d marked deleted_at; want 0 and at least 3 (reload, backfill, pause)", unmarked, marked)
	}
	// Bob is untouched: his desired state, candles and keys stay.
	if _, _, ok := s.state("bob"); !ok {
		t.Error("bob's desired state is gone")
	}
	if n := s.count(t, contract.StreamCandles, "vigil.candle.p.*.bob.>", 0); n < bobBefore {
		t.Errorf("bob's candle messages went from %d to %d", bobBefore, n)
	}
	if n := s.redisKeys(t, bob.UserID); n < bobKeys {
		t.Errorf("bob's Redis keys went from %d to %d", bobKeys, n)
	}
	code, out = s.tenantCtl(t, nil, "tenant", "delete", "carol")
	if code != exitOK || !strings.Contains(out, "was deleted before") || !strings.Contains(out, "no users row left") {
		t.Errorf("second delete: exit %d", code)
	}
	if left := s.subjectsOf(t, "carol"); len(left) > 0 {
		t.Errorf("left in the streams after the second delete: %v", left)
	}
}
