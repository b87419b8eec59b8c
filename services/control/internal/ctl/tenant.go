package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
)

// Defaults of a new tenant.
const (
	// DefaultTenantProvider is users.identity_provider of tenants added
	// by vigilctl.
	DefaultTenantProvider = "vigil"
	// DefaultTenantExchange is the exchange of a new tenant's account.
	DefaultTenantExchange = "coinbase"
	// defaultTenantSettings are the settings of a tenant added without
	// --settings: position-monitor on BTC-USD, no rules.
	defaultTenantSettings = `{"mode":"position-monitor","symbols":["BTC-USD"]}`
)

// Default NATS account limits of a tenant (deploy/nats/auth.conf), each
// overridden by its VIGIL_TENANT_* variable.
const (
	DefaultTenantMaxConnections   = 16
	DefaultTenantMaxSubscriptions = 1000
	DefaultTenantMaxPayload       = contract.MaxPayloadBytes
)

// sweepRounds bounds how often delete sweeps the streams and Redis until
// a sweep finds nothing (services that had not seen the deletion yet may
// still write a last message or key).
const sweepRounds = 20

func newTenantCmd(sys IO, conn *connFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tenant",
		Short: "Add, show or delete a tenant (admin; needs DATABASE_URL, and REDIS_URL for delete)",
		Long: `Add, show or delete a tenant: a user of vigil with its own NATS account.

add creates the users row and exchange account, has vigil-control load its
settings into the desired state (reload-settings) and prints the NATS account
block to add to deploy/nats/auth.conf (then reload nats-server).

delete pauses the user, deletes its desired state, purges every stream message
and KV entry under its subjects, deletes its Redis keys and its users row, and
marks its command_log and alert_events rows deleted_at (--purge-audit deletes
them). Running it again sweeps again. Remove the tenant's NATS account first.

Limits (the same variables as the services): VIGIL_MAX_SYMBOLS, VIGIL_MAX_RULES,
VIGIL_COMMANDS_PER_MINUTE, VIGIL_ALERTS_PER_MINUTE; NATS account limits
VIGIL_TENANT_MAX_CONNECTIONS, VIGIL_TENANT_MAX_SUBSCRIPTIONS,
VIGIL_TENANT_MAX_PAYLOAD.`,
	}
	cmd.AddCommand(newTenantAddCmd(sys, conn), newTenantShowCmd(sys, conn), newTenantDeleteCmd(sys, conn))
	return cmd
}

// tenantLimits are the limits a tenant runs under, from the environment
// (defaults as the services').
type tenantLimits struct {
	Symbols           int `json:"max_symbols"`
	Rules             int `json:"max_rules"`
	CommandsPerMinute int `json:"commands_per_minute"`
	AlertsPerMinute   int `json:"alerts_per_minute"`
	MaxConnections    int `json:"nats_max_connections"`
	MaxSubscriptions  int `json:"nats_max_subscriptions"`
	MaxPayload        int `json:"nats_max_payload"`
}

// readTenantLimits reads the limits, naming a variable that is not a
// non-negative number.
func readTenantLimits(getenv func(string) string) (tenantLimits, error) {
	l := tenantLimits{}
	for _, v := range []struct {
		name string
		to   *int
		def  int
	}{
		{"VIGIL_MAX_SYMBOLS", &l.Symbols, contract.DefaultLimits.MaxSymbols},
		{"VIGIL_MAX_RULES", &l.Rules, contract.DefaultLimits.MaxRules},
		{"VIGIL_COMMANDS_PER_MINUTE", &l.CommandsPerMinute, 600},
		{"VIGIL_ALERTS_PER_MINUTE", &l.AlertsPerMinute, 600},
		{"VIGIL_TENANT_MAX_CONNECTIONS", &l.MaxConnections, DefaultTenantMaxConnections},
		{"VIGIL_TENANT_MAX_SUBSCRIPTIONS", &l.MaxSubscriptions, DefaultTenantMaxSubscriptions},
		{"VIGIL_TENANT_MAX_PAYLOAD", &l.MaxPayload, DefaultTenantMaxPayload},
	} {
		*v.to = v.def
		if s := getenv(v.name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				return l, usageErrorf("%s: %q is not a non-negative number", v.name, s)
			}
			*v.to = n
		}
	}
	return l, nil
}

// contract is the settings limits of l.
func (l tenantLimits) contract() contract.Limits {
	return contract.Limits{MaxSymbols: l.Symbols, MaxRules: l.Rules}
}

// tenantArg checks the tenant name argument, a user token.
func tenantArg(args []string) (string, error) {
	if err := contract.ValidateUserToken(args[0]); err != nil {
		var fe contract.FieldError
		if errors.As(err, &fe) {
			return "", usageErrorf("NAME: %s", fe.Problem)
		}
		return "", usageErrorf("NAME: %v", err)
	}
	return args[0], nil
}

// openPostgres opens DATABASE_URL, which the tenant commands need.
func openPostgres(ctx context.Context, getenv func(string) string) (*pgxpool.Pool, error) {
	url := getenv("DATABASE_URL")
	if url == "" {
		return nil, usageErrorf("tenant reads and writes the users table: set DATABASE_URL, e.g. postgres://vigil@127.0.0.1:5432/vigil")
	}
	return db.NewPool(ctx, url)
}

func newTenantAddCmd(sys IO, conn *connFlags) *cobra.Command {
	var settingsFile, provider, exchange string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "add NAME",
		Short: "Create a tenant: users row, exchange account, desired state; print its NATS account",
		Example: `  vigilctl tenant add carol --settings carol.json
  vigilctl tenant add carol            # position-monitor on BTC-USD, no rules`,
		Args: exactArgs(1, "the tenant name (its user token)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := tenantArg(args)
			if err != nil {
				return err
			}
			limits, err := readTenantLimits(sys.Getenv)
			if err != nil {
				return err
			}
			doc, err := readSettingsDoc(settingsFile)
			if err != nil {
				return err
			}
			if _, err := contract.ParseSettings(doc, limits.contract()); err != nil {
				return fmt.Errorf("%w: --settings: %w (VIGIL_MAX_SYMBOLS %d, VIGIL_MAX_RULES %d)", ErrUsage, err, limits.Symbols, limits.Rules)
			}
			ctx := cmd.Context()
			pool, err := openPostgres(ctx, sys.Getenv)
			if err != nil {
				return err
			}
			defer pool.Close()
			users := db.NewUsers(pool)
			_, err = users.UserByToken(ctx, name)
			existed := err == nil
			if err != nil && !errors.Is(err, db.ErrUnknownUser) {
				return err
			}
			userID, exchangeID, err := users.SeedUser(ctx, provider, name, doc, exchange)
			if err != nil {
				return err
			}
			verb := "created"
			if existed {
				verb = "exists; settings replaced"
			}
			fmt.Fprintf(sys.Stdout, "tenant %s %s: user id %d, exchange account %d (%s)\n", name, verb, userID, exchangeID, exchange)
			nc, err := conn.connect(ctx, sys.Getenv)
			if err != nil {
				return err
			}
			defer nc.Close()
			s := sender{sys: sys, nc: nc, opts: commandOptions{user: name, operator: sys.Getenv("USER"), timeout: timeout}}
			if err := s.send(ctx, contract.CmdReloadSettings, []byte("{}")); err != nil {
				return fmt.Errorf("the desired state of %s was not written: %w", name, err)
			}
			fmt.Fprintf(sys.Stdout, "\n# NATS: add to deploy/nats/auth.conf (export lines into VIGIL's exports), set %s, then reload: nats-server --signal reload\n", passwordVar(name))
			writeTenantNATSConfig(sys.Stdout, name, limits)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&settingsFile, "settings", "", "file with the tenant's settings JSON (- for stdin; default position-monitor on BTC-USD, no rules)")
	f.StringVar(&provider, "provider", DefaultTenantProvider, "users.identity_provider")
	f.StringVar(&exchange, "exchange", DefaultTenantExchange, "exchange of the tenant's exchange account")
	f.DurationVar(&timeout, "timeout", DefaultWait, "how long to wait for reload-settings")
	return cmd
}

// readSettingsDoc reads --settings: a file, - for stdin, or the default.
func readSettingsDoc(path string) (json.RawMessage, error) {
	var b []byte
	var err error
	switch path {
	case "":
		return json.RawMessage(defaultTenantSettings), nil
	case "-":
		b, err = io.ReadAll(io.LimitReader(os.Stdin, contract.MaxPayloadBytes+1))
	default:
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, usageErrorf("--settings: %v", err)
	}
	return json.RawMessage(b), nil
}

// accountName is the NATS account of tenant name: ALICE for alice.
func accountName(name string) string {
	return strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// passwordVar is the environment variable of the tenant's NATS password.
func passwordVar(name string) string { return "VIGIL_NATS_" + accountName(name) + "_PASSWORD" }

// writeTenantNATSConfig writes the tenant's part of deploy/nats/auth.conf:
// the exports of VIGIL restricted to its account, and the account with its
// user, permissions, imports and limits.
func writeTenantNATSConfig(w io.Writer, name string, l tenantLimits) {
	acc := accountName(name)
	direct := []string{"$JS.API.DIRECT.GET.VIGIL_RESULTS.vigil.result." + name + ".>", "$JS.API.DIRECT.GET.KV_VIGIL_STATE.$KV.VIGIL_STATE.user." + name}
	fmt.Fprintf(w, "# in VIGIL { exports: [...] }\n")
	fmt.Fprintf(w, "{service: \"vigil.cmd.%s.>\", accounts: [%s]}\n", name, acc)
	for _, kind := range []string{"result", "progress", "alert"} {
		fmt.Fprintf(w, "{stream: \"vigil.%s.%s.>\", accounts: [%s]}\n", kind, name, acc)
	}
	for _, d := range direct {
		fmt.Fprintf(w, "{service: \"%s\", accounts: [%s]}\n", d, acc)
	}
	fmt.Fprintf(w, "# in accounts { ... }\n%s {\n", acc)
	fmt.Fprintf(w, "  limits: {max_connections: %d, max_subscriptions: %d, max_payload: %d, max_leafnodes: 0}\n", l.MaxConnections, l.MaxSubscriptions, l.MaxPayload)
	fmt.Fprintf(w, "  users: [\n    {user: %s, password: $%s, permissions: {\n", name, passwordVar(name))
	fmt.Fprintf(w, "      publish: [\"vigil.cmd.%s.>\", \"%s\", \"%s\"]\n", name, direct[0], direct[1])
	fmt.Fprintf(w, "      subscribe: [\"vigil.result.%[1]s.>\", \"vigil.progress.%[1]s.>\", \"vigil.alert.%[1]s.>\", \"_INBOX.>\", \"_INBOX_%[1]s.>\"]\n    }}\n  ]\n", name)
	fmt.Fprintf(w, "  imports: [\n    {service: {account: VIGIL, subject: \"vigil.cmd.%s.>\"}, share: true}\n", name)
	for _, kind := range []string{"result", "progress", "alert"} {
		fmt.Fprintf(w, "    {stream: {account: VIGIL, subject: \"vigil.%s.%s.>\"}}\n", kind, name)
	}
	for _, d := range direct {
		fmt.Fprintf(w, "    {service: {account: VIGIL, subject: \"%s\"}}\n", d)
	}
	fmt.Fprintf(w, "  ]\n}\n")
}

func newTenantShowCmd(sys IO, conn *connFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a tenant: user, settings against the limits, desired state",
		Args:  exactArgs(1, "the tenant name (its user token)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := tenantArg(args)
			if err != nil {
				return err
			}
			limits, err := readTenantLimits(sys.Getenv)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			pool, err := openPostgres(ctx, sys.Getenv)
			if err != nil {
				return err
			}
			defer pool.Close()
			u, err := db.NewUsers(pool).UserByToken(ctx, name)
			if err != nil {
				return unknownTenant(name, err)
			}
			var settings contract.Settings
			_ = json.Unmarshal(u.Settings, &settings)
			rules := 0
			for _, rs := range settings.Rules {
				rules += len(rs)
			}
			nc, err := conn.connect(ctx, sys.Getenv)
			if err != nil {
				return err
			}
			defer nc.Close()
			state, stateErr := readState(ctx, nc, name)
			if asJSON {
				return json.NewEncoder(sys.Stdout).Encode(map[string]any{"user": name, "user_id": u.ID, "provider": u.Provider,
					"symbols": len(settings.Symbols), "rules": rules, "limits": limits, "state": state})
			}
			fmt.Fprintf(sys.Stdout, "tenant %s: user id %d (%s)\n", name, u.ID, u.Provider)
			fmt.Fprintf(sys.Stdout, "symbols  %d of %d (VIGIL_MAX_SYMBOLS)\n", len(settings.Symbols), limits.Symbols)
			fmt.Fprintf(sys.Stdout, "rules    %d of %d (VIGIL_MAX_RULES)\n", rules, limits.Rules)
			fmt.Fprintf(sys.Stdout, "commands %d per minute (VIGIL_COMMANDS_PER_MINUTE)\n", limits.CommandsPerMinute)
			fmt.Fprintf(sys.Stdout, "alerts   %d per minute (VIGIL_ALERTS_PER_MINUTE)\n", limits.AlertsPerMinute)
			fmt.Fprintf(sys.Stdout, "nats     account %s: %d connections, %d subscriptions, %d bytes payload (deploy/nats/auth.conf)\n",
				accountName(name), limits.MaxConnections, limits.MaxSubscriptions, limits.MaxPayload)
			if stateErr != nil {
				fmt.Fprintf(sys.Stdout, "state    none (%v)\n", stateErr)
				return nil
			}
			fmt.Fprintf(sys.Stdout, "state    %s, %s, revision %d, symbols %s\n", stateWord(state.Paused), state.Mode, state.Revision, strings.Join(state.Symbols, ","))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}

// stateWord is paused or running.
func stateWord(paused bool) string {
	if paused {
		return "paused"
	}
	return "running"
}

// readState reads user's desired state from VIGIL_STATE.
func readState(ctx context.Context, nc *nats.Conn, user string) (*contract.DesiredState, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, contract.StateKey(user))
	if err != nil {
		return nil, err
	}
	var st contract.DesiredState
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// unknownTenant is the rejection of a name that is no tenant.
func unknownTenant(name string, err error) error {
	if errors.Is(err, db.ErrUnknownUser) {
		return fmt.Errorf("%w: unknown tenant %q: no user with that token in the users table", ErrRejected, name)
	}
	return err
}

func newTenantDeleteCmd(sys IO, conn *connFlags) *cobra.Command {
	var purgeAudit bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a tenant: pause, desired state, stream messages, KV entries, Redis keys, users row; audit rows marked",
		Example: `  vigilctl tenant delete carol
  vigilctl tenant delete carol --purge-audit   # delete command_log and alert_events rows too`,
		Args: exactArgs(1, "the tenant name (its user token)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := tenantArg(args)
			if err != nil {
				return err
			}
			redisURL := sys.Getenv("REDIS_URL")
			if redisURL == "" {
				return usageErrorf("tenant delete deletes the tenant's Redis keys: set REDIS_URL")
			}
			ctx := cmd.Context()
			pool, err := openPostgres(ctx, sys.Getenv)
			if err != nil {
				return err
			}
			defer pool.Close()
			users := db.NewUsers(pool)
			u, err := users.UserByToken(ctx, name)
			again := false
			if errors.Is(err, db.ErrUnknownUser) {
				id, derr := users.DeletedTenant(ctx, name)
				if derr != nil {
					return unknownTenant(name, err)
				}
				u, again = db.User{ID: id, Token: name}, true
			} else if err != nil {
				return err
			}
			nc, err := conn.connect(ctx, sys.Getenv)
			if err != nil {
				return err
			}
			defer nc.Close()
			rdb, err := redisstore.NewClient(ctx, redisURL)
			if err != nil {
				return err
			}
			defer rdb.Close()
			d := deleter{sys: sys, nc: nc, pool: pool, store: redisstore.New(rdb, 0), users: users, timeout: timeout}
			return d.delete(ctx, u, again, purgeAudit)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&purgeAudit, "purge-audit", false, "delete the tenant's command_log and alert_events rows instead of marking them deleted_at")
	f.DurationVar(&timeout, "timeout", DefaultWait, "how long to wait for the pause")
	return cmd
}

// deleter deletes one tenant.
type deleter struct {
	sys     IO
	nc      *nats.Conn
	pool    *pgxpool.Pool
	store   *redisstore.Store
	users   *db.Users
	timeout time.Duration
}

// delete runs the deletion of u (again: deleted before, sweep again).
func (d deleter) delete(ctx context.Context, u db.User, again, purgeAudit bool) error {
	out := d.sys.Stdout
	js, err := jetstream.New(d.nc)
	if err != nil {
		return err
	}
	if again {
		fmt.Fprintf(out, "tenant %s (user id %d) was deleted before; sweeping again\n", u.Token, u.ID)
	} else {
		d.pause(ctx, u.Token)
	}
	if err := deleteState(ctx, js, u.Token); err != nil {
		return err
	}
	if err := d.deleteConsumers(ctx, js, u.Token); err != nil {
		return err
	}
	purged, keys, err := d.sweep(ctx, js, u)
	if err != nil {
		return err
	}
	for _, p := range purged {
		fmt.Fprintf(out, "purged %s %s: %d messages\n", p.Stream, p.Subject, p.n)
	}
	fmt.Fprintf(out, "redis: %d keys deleted (candles:%d:*, indicator:%d:*)\n", keys, u.ID, u.ID)
	del, err := d.users.DeleteTenant(ctx, u, purgeAudit)
	if err != nil {
		return err
	}
	row := "users row deleted"
	if again {
		row = "no users row left"
	}
	audit := "marked deleted_at"
	if del.AuditPurged {
		audit = "deleted"
	}
	fmt.Fprintf(out, "postgres: %s; audit rows %s: %d command_log, %d alert_events\n", row, audit, del.CommandRows, del.AlertRows)
	fmt.Fprintf(out, "tenant %s deleted; remove account %s from the NATS config and reload (nats-server --signal reload) if not done yet\n",
		u.Token, accountName(u.Token))
	return nil
}

// deleteState deletes the user's desired state, so every service instance
// forgets the user (a delete marker that the sweep purges once the
// services saw it); nothing when there is none.
func deleteState(ctx context.Context, js jetstream.JetStream, user string) error {
	kv, err := js.KeyValue(ctx, contract.BucketState)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("desired state: %w", err)
	}
	if _, err := kv.Get(ctx, contract.StateKey(user)); errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err := kv.Delete(ctx, contract.StateKey(user)); err != nil {
		return fmt.Errorf("delete the desired state: %w", err)
	}
	return nil
}

// pause pauses the user and waits for its audit row, so that the pause is
// in command_log before the audit records are purged; a pause that fails
// (control down) is reported and the deletion goes on: the deleted
// desired state stops the services as well.
func (d deleter) pause(ctx context.Context, user string) {
	s := sender{sys: d.sys, nc: d.nc, opts: commandOptions{user: user, operator: d.sys.Getenv("USER"), timeout: d.timeout,
		id: "tenant-delete-" + strconv.FormatInt(time.Now().UnixNano(), 36)}}
	if err := s.send(ctx, contract.CmdPause, []byte("{}")); err != nil {
		fmt.Fprintf(d.sys.Stdout, "pause failed (%v); deleting the desired state stops the services instead\n", err)
		return
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for wctx.Err() == nil {
		var status string
		err := d.pool.QueryRow(wctx, `SELECT status FROM command_log WHERE id = $1`, s.opts.id).Scan(&status)
		if err == nil && status != "accepted" && status != "running" {
			return
		}
		select {
		case <-wctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	fmt.Fprintf(d.sys.Stdout, "the pause is not in command_log yet; its audit record is purged with the rest\n")
}

// deleteConsumers deletes the consumers that read only the user's
// subjects (vigil-alerts' webhook consumer vigil-webhook-<user> on
// VIGIL_ALERTS), so nothing of the user is delivered again.
func (d deleter) deleteConsumers(ctx context.Context, js jetstream.JetStream, user string) error {
	subjects, err := natsx.UserSubjects(user)
	if err != nil {
		return err
	}
	own := map[string]bool{}
	for _, s := range subjects {
		own[s.Stream+" "+s.Subject] = true
	}
	for _, name := range []string{contract.StreamAlerts, contract.StreamResults} {
		stream, err := js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		infos := stream.ListConsumers(ctx)
		var doomed []string
		for info := range infos.Info() {
			filters := append([]string{info.Config.FilterSubject}, info.Config.FilterSubjects...)
			mine := false
			for _, f := range filters {
				if f == "" {
					continue
				}
				if !own[name+" "+f] {
					mine = false
					break
				}
				mine = true
			}
			if mine {
				doomed = append(doomed, info.Name)
			}
		}
		if err := infos.Err(); err != nil {
			return fmt.Errorf("consumers of %s: %w", name, err)
		}
		for _, c := range doomed {
			if err := stream.DeleteConsumer(ctx, c); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return fmt.Errorf("delete consumer %s of %s: %w", c, name, err)
			}
			fmt.Fprintf(d.sys.Stdout, "consumer %s of %s deleted\n", c, name)
		}
	}
	return nil
}

// purge is one subject purged and how many messages it held.
type purge struct {
	natsx.StreamSubject
	n uint64
}

// sweep purges the user's subjects of every stream and deletes its Redis
// keys, again until a sweep finds nothing (a service that had not seen
// the deletion may write a last message or key), at most sweepRounds
// times.
func (d deleter) sweep(ctx context.Context, js jetstream.JetStream, u db.User) ([]purge, int, error) {
	subjects, err := natsx.UserSubjects(u.Token)
	if err != nil {
		return nil, 0, err
	}
	total := make([]purge, len(subjects))
	keys := 0
	for round := 0; round < sweepRounds; round++ {
		found := false
		for i, s := range subjects {
			total[i].StreamSubject = s
			n, err := purgeSubject(ctx, js, s)
			if err != nil {
				return nil, 0, err
			}
			total[i].n += n
			found = found || n > 0
		}
		k, err := d.store.ClearUser(ctx, u.ID)
		if err != nil {
			return nil, 0, fmt.Errorf("redis: %w", err)
		}
		keys += k
		if !found && k == 0 {
			return total, keys, nil
		}
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return total, keys, nil
}

// purgeSubject purges the messages of s and returns how many there were;
// a stream that does not exist holds nothing.
func purgeSubject(ctx context.Context, js jetstream.JetStream, s natsx.StreamSubject) (uint64, error) {
	stream, err := js.Stream(ctx, s.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", s.Stream, err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(s.Subject))
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", s.Stream, err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	if n == 0 {
		return 0, nil
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSubject(s.Subject)); err != nil {
		return 0, fmt.Errorf("purge %s %s: %w", s.Stream, s.Subject, err)
	}
	return n, nil
}
