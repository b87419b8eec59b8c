package e2e

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/testenv"
)

// tenantUser is the tenant of deploy/nats the tenant recipes run as.
const tenantUser = "alice"

// accountPasswords are the passwords deploy/nats/vigil.conf reads from
// the environment, by user.
var accountPasswords = map[string]string{
	"admin": "admin-pw", "vigil-feed": "feed-pw", "vigil-indicators": "indicators-pw",
	"vigil-alerts": "alerts-pw", "vigil-control": "control-pw", "alice": "alice-pw", "bob": "bob-pw",
}

// TestOperatorsAsTenant checks docs/operators.md's "Admin or tenant"
// table: against a server with deploy/nats/vigil.conf (tenants in
// accounts of their own) and the four services on their own users, it
// runs the recipes marked tenant with alice's credentials, those the
// table allows a tenant succeeding and the admin-only ones refused.
func TestOperatorsAsTenant(t *testing.T) {
	natsBin := findNATSCLI(t)
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	recipes, err := parseRecipes(filepath.Join(root, "docs", "operators.md"))
	if err != nil {
		t.Fatal(err)
	}
	recipes = slices.DeleteFunc(recipes, func(r recipe) bool { return !r.Tenant })
	if len(recipes) == 0 {
		t.Fatal("docs/operators.md has no tenant recipes")
	}
	for user, pw := range accountPasswords {
		t.Setenv("VIGIL_NATS_"+strings.ToUpper(strings.NewReplacer("vigil-", "", "-", "_").Replace(user))+"_PASSWORD", pw)
	}
	bin := testenv.BuildBinaries(t)
	dbURL, redisURL := testenv.Postgres(t), testenv.Redis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := localstack.StartNATS(ctx, localstack.Options{Dir: t.TempDir(), NATSConfig: filepath.Join(root, "deploy", "nats", "vigil.conf")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	pool, err := db.NewPool(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, _, err := db.NewUsers(pool).SeedUser(ctx, "test", tenantUser,
		[]byte(`{"mode":"position-monitor","symbols":["BTC-USD"]}`), "coinbase"); err != nil {
		t.Fatal(err)
	}
	admin, err := nats.Connect(accountURL(t, srv.URL(), "admin"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	env := append(os.Environ(), "REDIS_URL="+redisURL, "DATABASE_URL="+dbURL,
		"VIGIL_FEED_SOURCE=sim", "VIGIL_LOG_LEVEL=debug", "VIGIL_SHUTDOWN_TIMEOUT=5s")
	for _, svc := range services {
		testenv.StartService(t, admin, localstack.ServiceOptions{
			Binary: filepath.Join(bin, svc), Service: svc, Instance: svc + "-1",
			Env:     append(env, "NATS_URL="+accountURL(t, srv.URL(), svc)),
			LogPath: filepath.Join(t.TempDir(), svc+".log"), RegisterTimeout: time.Minute,
		})
	}
	testenv.WaitFor(t, time.Minute, "vigil-control's desired state of "+tenantUser, func() bool {
		return hasStateOn(admin, tenantUser)
	})
	ops := &operatorStack{natsDir: filepath.Dir(natsBin), ctlDir: bin, Stack: &testenv.Stack{NATSURL: accountURL(t, srv.URL(), tenantUser), DatabaseURL: "postgres://tenant-has-none"}}
	runRecipes(t, recipes, ops.env(t, "USER="+tenantUser), 90*time.Second, 60*time.Second)
}

// accountURL is the server's URL with user's credentials of vigil.conf.
func accountURL(t *testing.T, server, user string) string {
	t.Helper()
	u, err := url.Parse(server)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, accountPasswords[user])
	return u.String()
}

// hasStateOn reports whether user has a desired state in KV VIGIL_STATE,
// read on nc.
func hasStateOn(nc *nats.Conn, user string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return false
	}
	kv, err := js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		return false
	}
	_, err = kv.Get(ctx, contract.StateKey(user))
	return err == nil
}
