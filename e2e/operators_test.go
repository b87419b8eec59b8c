package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/testenv"
)

// natsCLIVersion is the nats CLI version docs/operators.md is written for.
const natsCLIVersion = "v0.5.1"

// operatorStack is one running vigil (one instance of each service on the
// simulator) shared by the operator tests, with its users seeded:
// demo (docs/operators.md), ops (vigilctl tests) and broken (a user whose
// settings become invalid).
type operatorStack struct {
	*testenv.Stack
	// natsDir holds the nats binary, ctlDir vigilctl.
	natsDir, ctlDir string
	db              *db.Users
}

// Users of the operator tests.
const (
	docUser    = "demo"
	ctlUser    = "ops"
	brokenUser = "broken"
)

// TestOperators runs docs/operators.md recipe by recipe with the real nats
// CLI and vigilctl, and tests every vigilctl subcommand, against one stack.
// The two run in parallel on different users.
func TestOperators(t *testing.T) {
	natsBin := findNATSCLI(t)
	stack := testenv.NewStack(t)
	stack.Env = append(stack.Env, "VIGIL_FEED_SOURCE=sim")
	ops := &operatorStack{Stack: stack, natsDir: filepath.Dir(natsBin), ctlDir: filepath.Dir(stack.Bin("vigilctl"))}
	if _, err := os.Stat(stack.Bin("vigilctl")); err != nil {
		t.Fatalf("vigilctl was not built: %v", err)
	}
	ops.seedUsers(t)
	for _, svc := range services {
		short := strings.TrimPrefix(svc, "vigil-")
		stack.Start(svc, short+"-1")
	}
	// vigil-control writes each user's first desired state at start.
	for _, user := range []string{docUser, ctlUser, brokenUser} {
		if !pollUntil(30*time.Second, func() bool { return ops.hasState(user) }) {
			t.Errorf("vigil-control wrote no desired state for %s in KV %s within 30s", user, contract.BucketState)
		}
	}

	t.Run("docs", func(t *testing.T) {
		t.Parallel()
		root, err := localstack.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		recipes, err := parseRecipes(filepath.Join(root, "docs", "operators.md"))
		if err != nil {
			t.Fatal(err)
		}
		// The tenant recipes are TestOperatorsAsTenant's.
		recipes = slices.DeleteFunc(recipes, func(r recipe) bool { return r.Tenant })
		if len(recipes) == 0 {
			t.Fatal("docs/operators.md has no tested recipes")
		}
		runRecipes(t, recipes, ops.env(t, "USER=doc-operator"), 90*time.Second, 60*time.Second)
	})
	t.Run("vigilctl", func(t *testing.T) {
		t.Parallel()
		testVigilctl(t, ops)
	})
}

// findNATSCLI finds the nats CLI of the recipes' version on PATH or in
// $(go env GOPATH)/bin.
func findNATSCLI(t *testing.T) string {
	t.Helper()
	var candidates []string
	if p, err := exec.LookPath("nats"); err == nil {
		candidates = append(candidates, p)
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, dir := range filepath.SplitList(strings.TrimSpace(string(out))) {
			candidates = append(candidates, filepath.Join(dir, "bin", "nats"))
		}
	}
	var found []string
	for _, p := range candidates {
		out, err := exec.Command(p, "--version").CombinedOutput()
		if err != nil {
			continue
		}
		version := strings.TrimSpace(string(out))
		if version == natsCLIVersion {
			return p
		}
		found = append(found, p+" is "+version)
	}
	if len(found) > 0 {
		t.Fatalf("the nats CLI %s is needed (found %s): go install github.com/nats-io/natscli/nats@%s", natsCLIVersion, strings.Join(found, ", "), natsCLIVersion)
	}
	t.Fatalf("the nats CLI is not installed (not on PATH nor in $(go env GOPATH)/bin): run make deps")
	return ""
}

// seedUsers creates the test users before vigil-control starts.
func (o *operatorStack) seedUsers(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := db.NewPool(ctx, o.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	o.db = db.NewUsers(pool)
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	demo, err := demoSettings(filepath.Join(root, "deploy", "dev", "demo-settings.json"))
	if err != nil {
		t.Fatal(err)
	}
	for user, settings := range map[string][]byte{
		docUser:    demo,
		ctlUser:    []byte(`{"mode":"position-monitor","symbols":["BTC-USD","ETH-USD"]}`),
		brokenUser: []byte(`{"mode":"position-monitor","symbols":["BTC-USD"]}`),
	} {
		if _, _, err := o.db.SeedUser(ctx, "test", user, settings, "coinbase"); err != nil {
			t.Fatal(err)
		}
	}
}

// demoSettings are the dev stack's demo settings plus a live price rule
// with a reminder cooldown in the modes the recipes use ("price above 1"
// always holds), so that alerts fire within seconds of a resume: the 1m
// rule on its second fresh bar (a sim minute is a wall second), then every
// ten sim minutes.
func demoSettings(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := contract.ParseSettings(b, contract.DefaultLimits)
	if err != nil {
		return nil, err
	}
	one := 1.0
	for mode, tf := range map[contract.Mode]contract.Timeframe{contract.ModePositionMonitor: contract.TF1h, contract.ModeScalperMACDV: contract.TF1m} {
		s.Rules[mode] = append(s.Rules[mode], contract.Rule{ID: "btc-price-watch-" + string(tf), Symbol: "BTC-USD", Timeframe: tf,
			Kind: contract.RuleThreshold, SeriesRef: contract.SeriesRef{Indicator: "price"}, Op: contract.OpAbove, Value: &one,
			Evaluate: contract.OnLive, Cooldown: (10 * tf.Duration()).String()})
	}
	out, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	if _, err := contract.ParseSettings(out, contract.DefaultLimits); err != nil {
		return nil, err
	}
	return out, nil
}

// hasState reports whether user has a desired state in KV VIGIL_STATE.
func (o *operatorStack) hasState(user string) bool {
	_, ok := o.state(user)
	return ok
}

// state reads user's desired state.
func (o *operatorStack) state(user string) (contract.DesiredState, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	js, err := jetstream.New(o.Conn())
	if err != nil {
		return contract.DesiredState{}, false
	}
	kv, err := js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		return contract.DesiredState{}, false
	}
	e, err := kv.Get(ctx, contract.StateKey(user))
	if err != nil {
		return contract.DesiredState{}, false
	}
	var st contract.DesiredState
	return st, json.Unmarshal(e.Value(), &st) == nil
}

// result reads the published result of command id of user, if any.
func (o *operatorStack) result(user, id string) (contract.Result, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	js, err := jetstream.New(o.Conn())
	if err != nil {
		return contract.Result{}, false
	}
	stream, err := js.Stream(ctx, contract.StreamResults)
	if err != nil {
		return contract.Result{}, false
	}
	msg, err := stream.GetLastMsgForSubject(ctx, contract.ResultSubject(user, id))
	if errors.Is(err, jetstream.ErrMsgNotFound) || err != nil {
		return contract.Result{}, false
	}
	var r contract.Result
	return r, json.Unmarshal(msg.Data, &r) == nil
}

// env is the environment of the operator's shell: the stack's servers,
// the nats CLI and vigilctl first on PATH, a private nats CLI config
// directory, and no NATS settings from the test's own environment.
func (o *operatorStack) env(t *testing.T, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "NATS_"), name == "XDG_CONFIG_HOME", name == "DATABASE_URL",
			name == "REDIS_URL", name == "USER", name == "PATH":
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"PATH="+o.ctlDir+string(os.PathListSeparator)+o.natsDir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"NATS_URL="+o.NATSURL, "DATABASE_URL="+o.DatabaseURL, "REDIS_URL="+o.RedisURL, "XDG_CONFIG_HOME="+t.TempDir(), "NO_COLOR=1")
	return append(env, extra...)
}
