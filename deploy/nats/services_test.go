package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/partition"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// serviceUsers are the services' NATS users in vigil.conf, by binary.
var serviceUsers = map[string]string{
	"vigil-feed":       "vigil-feed",
	"vigil-indicators": "vigil-indicators",
	"vigil-alerts":     "vigil-alerts",
	"vigil-control":    "vigil-control",
}

// liveSettings watch BTC-USD on the simulator with a live price rule that
// always holds, so alice gets candles, indicator updates and alerts about
// once a wall second.
const liveSettings = `{"mode":"scalper-macdv","symbols":["BTC-USD"],"rules":{"scalper-macdv":[
	{"id":"price-live","symbol":"BTC-USD","timeframe":"1m","kind":"threshold","indicator":"price","op":"above","value":1,"evaluate":"live","cooldown":"1m"}]}}`

// serviceURL is the server's URL with the credentials of user.
func serviceURL(t *testing.T, server, user string) string {
	t.Helper()
	u, err := url.Parse(server)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, passwords[passwordVar(user)])
	return u.String()
}

// passwordVar is the environment variable of user's password in vigil.conf.
func passwordVar(user string) string {
	return "VIGIL_NATS_" + strings.ToUpper(strings.NewReplacer("vigil-", "", "-", "_").Replace(user)) + "_PASSWORD"
}

// TestServicesRunOnTheirOwnCredentials runs the four real services, each
// with its own NATS user of vigil.conf, and alice commanding them with
// hers: commands are acked and answered, data flows to alerts, and the
// server logs no permission violation.
func TestServicesRunOnTheirOwnCredentials(t *testing.T) {
	srv := startServer(t)
	bin := testenv.BuildBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dbURL := testenv.Postgres(t)
	pool, err := db.NewPool(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, _, err := db.NewUsers(pool).SeedUser(ctx, "test", "alice", json.RawMessage(liveSettings), "coinbase"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if v := srv.violations(); t.Failed() && len(v) > 0 {
			t.Logf("permission violations:\n%s", strings.Join(v[:min(len(v), 20)], "\n"))
		}
	})
	admin := connect(t, srv.url, "admin", "admin-pw", "")
	env := append(os.Environ(), "REDIS_URL="+testenv.Redis(t), "DATABASE_URL="+dbURL,
		"VIGIL_FEED_SOURCE=sim", "VIGIL_LOG_LEVEL=debug", "VIGIL_SHUTDOWN_TIMEOUT=5s")
	for _, svc := range []string{"vigil-feed", "vigil-indicators", "vigil-alerts", "vigil-control"} {
		testenv.StartService(t, admin.Conn, localstack.ServiceOptions{
			Binary: filepath.Join(bin, svc), Service: svc, Instance: svc + "-1",
			Env:     append(env, "NATS_URL="+serviceURL(t, srv.url, serviceUsers[svc])),
			LogPath: filepath.Join(t.TempDir(), svc+".log"), RegisterTimeout: time.Minute,
		})
	}

	js, err := jetstream.New(admin.Conn)
	if err != nil {
		t.Fatal(err)
	}
	alice := connect(t, srv.url, "alice", "alice-pw", "_INBOX_alice")
	results, err := alice.SubscribeSync("vigil.result.alice.>")
	if err != nil {
		t.Fatal(err)
	}
	progress, err := alice.SubscribeSync("vigil.progress.alice.>")
	if err != nil {
		t.Fatal(err)
	}
	// Alice follows her alerts as a core subscriber: the stream republishes
	// what vigil-alerts recorded on its ingest subjects.
	alerts, err := alice.SubscribeSync("vigil.alert.alice.>")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cmd     contract.Command
		payload string
		steps   int
	}{
		{contract.CmdPause, `{}`, 3},
		{contract.CmdResume, `{}`, 3},
		{contract.CmdReloadSettings, `{}`, 3},
		{contract.CmdSwitchMode, `{"mode":"scalper-orderbook"}`, 4},
		{contract.CmdClearCache, `{"scope":"timeframe","symbol":"BTC-USD","timeframe":"1m"}`, 2},
		{contract.CmdForceBackfill, `{"symbol":"BTC-USD","timeframes":["1h"]}`, 2},
		{contract.CmdSwitchMode, `{"mode":"scalper-macdv"}`, 4},
	} {
		res := command(t, alice, results, c.cmd, c.payload)
		if res.Status != contract.StatusSucceeded || len(res.Steps) < 1 {
			t.Fatalf("%s: result %+v, want succeeded", c.cmd, res)
		}
	}
	forgeriesAreRecordedAsTheRealIdentity(ctx, t, pool, alice, admin)
	tenantToolingWorks(ctx, t, filepath.Join(bin, "vigilctl"), serviceURL(t, srv.url, "alice"), alice)
	if _, err := progress.NextMsg(10 * time.Second); err != nil {
		t.Fatalf("alice got no progress of her force-backfill: %v", err)
	}
	after := map[string]uint64{}
	for _, stream := range []string{contract.StreamCandles, contract.StreamIndicators, contract.StreamAlerts} {
		after[stream] = lastSeq(ctx, t, js, stream)
	}
	testenv.WaitFor(t, time.Minute, "alice's candles, indicator updates and alerts after resume", func() bool {
		for stream, seq := range after {
			if lastSeq(ctx, t, js, stream) <= seq {
				return false
			}
		}
		return true
	})
	if m, err := alerts.NextMsg(time.Minute); err != nil {
		t.Fatalf("alice got no alert on vigil.alert.alice.>: %v", err)
	} else if !strings.HasPrefix(m.Subject, "vigil.alert.alice.") {
		t.Fatalf("alice got an alert on %s", m.Subject)
	}
	v := slices.DeleteFunc(srv.violations(), func(line string) bool {
		return slices.ContainsFunc(tenantProbes, func(probe string) bool { return strings.HasSuffix(line, `"`+probe+`"`) }) ||
			tenantStatusAsks.MatchString(line)
	})
	if len(v) > 0 {
		t.Fatalf("the server logged %d permission violations of the services or of vigilctl as alice, e.g.:\n%s", len(v), strings.Join(v[:min(len(v), 20)], "\n"))
	}
}

// command sends cmd with payload for alice and returns its result.
func command(t *testing.T, alice *client, results *nats.Subscription, cmd contract.Command, payload string) contract.Result {
	t.Helper()
	reply, err := alice.Request(contract.CommandSubject("alice", cmd), []byte(payload), 10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	var ack contract.Ack
	if err := json.Unmarshal(reply.Data, &ack); err != nil || !ack.Accepted {
		t.Fatalf("%s: ACK %s (%v)", cmd, reply.Data, err)
	}
	for {
		m, err := results.NextMsg(30 * time.Second)
		if err != nil {
			t.Fatalf("%s: no result: %v", cmd, err)
		}
		var res contract.Result
		if err := json.Unmarshal(m.Data, &res); err != nil {
			t.Fatalf("%s: result %s: %v", cmd, m.Data, err)
		}
		if res.ID == ack.ID {
			return res
		}
	}
}

// lastSeq is the last sequence of stream.
func lastSeq(ctx context.Context, t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// TestServicesCannotActAsEachOther checks, per service user, subjects that
// belong to another service (or to nobody) are refused by the server.
func TestServicesCannotActAsEachOther(t *testing.T) {
	srv := startServer(t)
	denied := map[string][]string{
		"vigil-feed": {"vigil.indicator.alice.1.BTC-USD.1m", "vigil.alert.alice.r1", "vigil.alertin.alice.r1", "vigil.result.alice.c1",
			"vigil.cmd.alice.pause", "$KV.VIGIL_STATE.user.alice", "$JS.API.STREAM.DELETE.VIGIL_CANDLES", "vigil.svc.alerts.pause"},
		"vigil-indicators": {"vigil.candle.alice.1.BTC-USD.1m", "vigil.alert.alice.r1", "vigil.alertin.alice.r1", "vigil.progress.alice.c1",
			"$KV.VIGIL_STATE.user.alice", "$JS.API.STREAM.PURGE.VIGIL_INDICATORS", "vigil.svc.feed.pause"},
		// vigil-alerts publishes on the ingest subjects only: what core
		// subscribers get comes from the stream.
		"vigil-alerts": {"vigil.candle.alice.1.BTC-USD.1m", "vigil.indicator.alice.1.BTC-USD.1m", "vigil.alert.alice.r1", "vigil.result.alice.c1",
			"$KV.VIGIL_STATE.user.alice", "$JS.API.STREAM.DELETE.VIGIL_ALERTS", "vigil.svc.indicators.pause"},
		"vigil-control": {"vigil.candle.alice.1.BTC-USD.1m", "vigil.indicator.alice.1.BTC-USD.1m", "vigil.alert.alice.r1", "vigil.alertin.alice.r1",
			"$KV.VIGIL_ALERT_STATE.alice", "$JS.API.STREAM.DELETE.VIGIL_RESULTS"},
	}
	for svc, subjects := range denied {
		t.Run(svc, func(t *testing.T) {
			c := connect(t, srv.url, serviceUsers[svc], passwords[passwordVar(serviceUsers[svc])], "")
			for _, subject := range subjects {
				if err := c.Publish(subject, []byte(`{}`)); err != nil {
					t.Fatal(err)
				}
				if err := c.Flush(); err != nil {
					t.Fatal(err)
				}
				testenv.WaitFor(t, 30*time.Second, fmt.Sprintf("%s publishing %s denied", svc, subject), func() bool { return c.deniedContains(subject) })
				logged := slices.ContainsFunc(srv.violations(), func(line string) bool { return strings.Contains(line, subject) })
				if !logged {
					t.Errorf("the server did not log the violation of %s publishing %s", svc, subject)
				}
			}
		})
	}
}

// TestServicesReadFromBucketLeaders checks that each service user may
// read the buckets whose reads decide a compare-and-set from the bucket's
// leader (natsx.KVGet, $JS.API.STREAM.MSG.GET), and that the feed, which
// holds no partitions, may not read the leases.
func TestServicesReadFromBucketLeaders(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := connect(t, srv.url, "admin", "admin-pw", "")
	js, err := jetstream.New(admin.Conn)
	if err != nil {
		t.Fatal(err)
	}
	for _, bucket := range []string{contract.BucketState, natsx.BucketQueue, natsx.BucketAlertState, partition.LeaseBucket} {
		if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket}); err != nil {
			t.Fatal(err)
		}
	}
	reads := map[string][]string{
		"vigil-control":    {contract.BucketState, natsx.BucketQueue},
		"vigil-indicators": {partition.LeaseBucket},
		"vigil-alerts":     {partition.LeaseBucket, natsx.BucketAlertState},
	}
	for svc, buckets := range reads {
		c := connect(t, srv.url, serviceUsers[svc], passwords[passwordVar(serviceUsers[svc])], "")
		sjs, err := jetstream.New(c.Conn)
		if err != nil {
			t.Fatal(err)
		}
		for _, bucket := range buckets {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := natsx.KVGet(rctx, sjs, bucket, "user.nobody")
			cancel()
			if !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Errorf("%s reading %s from its leader: %v, want ErrKeyNotFound", svc, bucket, err)
			}
		}
	}
	feed := connect(t, srv.url, serviceUsers["vigil-feed"], passwords[passwordVar(serviceUsers["vigil-feed"])], "")
	fjs, err := jetstream.New(feed.Conn)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := natsx.KVGet(rctx, fjs, partition.LeaseBucket, "feed.0"); err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("vigil-feed read the partition leases from their leader: %v", err)
	}
}

// forgeriesAreRecordedAsTheRealIdentity sends commands whose headers claim
// another operator: command_log records the identity the server
// authenticated (alice@ALICE for alice, whatever she claims; local for
// the admin of vigil's own account), the claimed Vigil-Operator only as
// the display name.
func forgeriesAreRecordedAsTheRealIdentity(ctx context.Context, t *testing.T, pool *pgxpool.Pool, alice, admin *client) {
	t.Helper()
	forgeries := []nats.Header{
		{"Nats-Request-Info": {`{"user":"bob"}`}},
		{"Nats-Request-Info": {`{"acc":"VIGIL","user":"admin"}`, `{"acc":"BOB","user":"bob"}`}},
		{"Vigil-Operator": {"admin"}},
		{"Vigil-Operator": {"bob"}, "Nats-Request-Info": {`{"acc":"BOB","user":"bob"}`}},
	}
	check := func(who *client, want string) {
		for i, h := range forgeries {
			reply, err := who.RequestMsg(&nats.Msg{Subject: contract.CommandSubject("alice", contract.CmdResume), Header: h}, 10*time.Second)
			if err != nil {
				t.Fatalf("forgery %d: %v", i, err)
			}
			var ack contract.Ack
			if err := json.Unmarshal(reply.Data, &ack); err != nil || !ack.Accepted {
				t.Fatalf("forgery %d: ACK %s (%v)", i, reply.Data, err)
			}
			var operator, name string
			testenv.WaitFor(t, 30*time.Second, "command_log row of "+ack.ID, func() bool {
				return pool.QueryRow(ctx, `SELECT operator, operator_name FROM command_log WHERE user_token = 'alice' AND id = $1`,
					ack.ID).Scan(&operator, &name) == nil
			})
			if operator != want || name != h.Get("Vigil-Operator") {
				t.Errorf("forgery %d %v: command_log operator %q, operator_name %q; want %q, %q", i, h, operator, name, want, h.Get("Vigil-Operator"))
			}
		}
	}
	check(alice, "alice@ALICE")
	check(admin, "local")
}

// tenantProbes are the JetStream API calls alice tries and must be
// refused: the only violations the server may log.
var tenantProbes = []string{"$JS.API.DIRECT.GET.VIGIL_RESULTS.vigil.result.bob.x", "$JS.API.DIRECT.GET.KV_VIGIL_STATE.$KV.VIGIL_STATE.user.bob",
	"$JS.API.STREAM.INFO.VIGIL_RESULTS", "$JS.API.STREAM.MSG.GET.VIGIL_RESULTS"}

// tenantStatusAsks are the violations of vigilctl status as alice: it
// asks every service's instances, which only the admin may.
var tenantStatusAsks = regexp.MustCompile(`"ALICE/user:alice" - Publish Violation - Subject "(\$SRV\.(INFO|STATS)\.vigil-[a-z]+|vigil\.svc\.[a-z]+\.status)"$`)

// tenantToolingWorks runs vigilctl with alice's credentials: a command
// waits for its result (subscribed before the request; a result already
// published, the same --id again, comes from the direct get alice's
// account imports), and alice reads her own result and desired state by
// direct get but not bob's.
func tenantToolingWorks(ctx context.Context, t *testing.T, vigilctl, aliceURL string, alice *client) {
	t.Helper()
	for _, args := range [][]string{
		{"pause", "--user", "alice", "--id", "tenant-pause-1"},
		{"pause", "--user", "alice", "--id", "tenant-pause-1"}, // already published: direct get
		{"resume", "--user", "alice"},
	} {
		cmd := exec.CommandContext(ctx, vigilctl, append(args, "--server", aliceURL, "--timeout", "60s")...)
		cmd.Env = append(os.Environ(), "NO_COLOR=1", "NATS_CONTEXT=", "XDG_CONFIG_HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "succeeded") {
			t.Errorf("vigilctl %v as alice: %v\n%s", args, err, out)
		}
	}
	// status --user: alice's desired state (direct get); the services'
	// instances and queues are the admin's to see, so alice's asks for
	// them are refused (tenantStatusAsks) and the tables stay empty.
	cmd := exec.CommandContext(ctx, vigilctl, "status", "--user", "alice", "--json", "--server", aliceURL)
	cmd.Env = append(os.Environ(), "NO_COLOR=1", "NATS_CONTEXT=", "XDG_CONFIG_HOME="+t.TempDir())
	out, err := cmd.Output()
	var report struct {
		Users []struct {
			User string `json:"user"`
			Mode string `json:"mode"`
		} `json:"users"`
	}
	if err != nil || json.Unmarshal(out, &report) != nil || len(report.Users) != 1 || report.Users[0].User != "alice" || report.Users[0].Mode == "" {
		t.Errorf("vigilctl status --user alice as alice: %v\n%s", err, out)
	}
	m, err := alice.Request("$JS.API.DIRECT.GET.VIGIL_RESULTS.vigil.result.alice.tenant-pause-1", nil, 5*time.Second)
	if err != nil || m.Header.Get("Status") != "" || !strings.Contains(string(m.Data), `"id":"tenant-pause-1"`) {
		t.Errorf("alice's direct get of her result: %v %v %s", err, m.Header, m.Data)
	}
	m, err = alice.Request("$JS.API.DIRECT.GET.KV_VIGIL_STATE.$KV.VIGIL_STATE.user.alice", nil, 5*time.Second)
	if err != nil || !strings.Contains(string(m.Data), `"user":"alice"`) {
		t.Errorf("alice's direct get of her desired state: %v %s", err, m.Data)
	}
	for _, subject := range tenantProbes {
		if m, err := alice.Request(subject, []byte(`{"last_by_subj":"vigil.result.bob.x"}`), 500*time.Millisecond); err == nil {
			t.Errorf("alice got an answer on %s: %s", subject, m.Data)
		}
		testenv.WaitFor(t, 30*time.Second, "alice's "+subject+" refused", func() bool { return alice.deniedContains(subject) })
	}
}
