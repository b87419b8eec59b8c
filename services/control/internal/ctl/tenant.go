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

// tenantView is what tenant show --json prints.
type tenantView struct {
	User     string `json:"user"`
	UserID   int64  `json:"user_id"`
	Provider string `json:"provider"`
	// Symbols and Rules count the tenant's symbols and rules (all modes)
	// in users.settings.
	Symbols int          `json:"symbols"`
	Rules   int          `json:"rules"`
	Limits  tenantLimits `json:"limits"`
	// State is the tenant's desired state, nil when it has none.
	State *contract.DesiredState `json:"state"`
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
				return json.NewEncoder(sys.Stdout).Encode(tenantView{User: name, UserID: u.ID, Provider: u.Provider,
					Symbols: len(settings.Symbols), Rules: rules, Limits: limits, State: state})
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
