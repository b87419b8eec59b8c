package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/localstack"
)

// NATS users of the dev stack with auth on: the admin and the services in
// the VIGIL account (as deploy/nats/auth.conf), the demo tenant in an
// account of its own.
const (
	adminUser = "admin"
	demoUser  = demoToken
)

// nats CLI contexts the dev stack writes: the admin's, selected, and the
// demo tenant's.
const (
	adminContext = "vigil"
	demoContext  = "demo"
)

// devAuth is the dev stack's NATS auth: a password per user, generated on
// the first run into <run dir>/auth/passwords.json (mode 0600, under .run/
// which git ignores) and kept, and the nats-server configuration made from
// them next to it.
type devAuth struct {
	dir       string
	passwords map[string]string // by NATS user
}

// authUsers are the users the dev stack's NATS knows: the admin, the
// tenants and the services.
func authUsers() []string {
	users := append([]string{adminUser}, devTenants(os.Getenv)...)
	for _, s := range services {
		users = append(users, s.Name)
	}
	return users
}

// devTenants are the dev stack's tenants: demo and the valid user tokens
// of VIGIL_DEV_TENANTS (comma-separated; add one with vigilctl tenant add
// and restart make run with it listed).
func devTenants(getenv func(string) string) []string {
	tenants := []string{demoUser}
	for _, t := range strings.Split(getenv("VIGIL_DEV_TENANTS"), ",") {
		t = strings.TrimSpace(t)
		if contract.ValidateUserToken(t) == nil && !slices.Contains(tenants, t) && t != adminUser {
			tenants = append(tenants, t)
		}
	}
	return tenants
}

// accountLimits are the NATS account limits of every tenant:
// VIGIL_TENANT_MAX_CONNECTIONS (16), VIGIL_TENANT_MAX_SUBSCRIPTIONS (1000)
// and VIGIL_TENANT_MAX_PAYLOAD (65536), as deploy/nats/auth.conf.
type accountLimits struct {
	MaxConnections, MaxSubscriptions, MaxPayload int
}

// readAccountLimits reads the account limits, naming a bad variable.
func readAccountLimits(getenv func(string) string) (accountLimits, error) {
	l := accountLimits{MaxConnections: 16, MaxSubscriptions: 1000, MaxPayload: contract.MaxPayloadBytes}
	for _, v := range []struct {
		name string
		to   *int
	}{{"VIGIL_TENANT_MAX_CONNECTIONS", &l.MaxConnections}, {"VIGIL_TENANT_MAX_SUBSCRIPTIONS", &l.MaxSubscriptions}, {"VIGIL_TENANT_MAX_PAYLOAD", &l.MaxPayload}} {
		if s := getenv(v.name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				return l, fmt.Errorf("devstack: %s: %q is not a positive number", v.name, s)
			}
			*v.to = n
		}
	}
	return l, nil
}

// tenantAccount is the NATS account of tenant t: DEMO for demo.
func tenantAccount(t string) string { return strings.ToUpper(strings.ReplaceAll(t, "-", "_")) }

// prepareAuth loads (or generates) the passwords in runDir/auth and writes
// the nats-server configuration there: deploy/nats/services.conf (the
// services' permissions, copied) and nats.conf (accounts and users).
func prepareAuth(root, runDir string) (*devAuth, error) {
	a := &devAuth{dir: filepath.Join(runDir, "auth"), passwords: map[string]string{}}
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return nil, fmt.Errorf("devstack: auth: %w", err)
	}
	path := filepath.Join(a.dir, "passwords.json")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &a.passwords); err != nil {
			return nil, fmt.Errorf("devstack: auth: %s: %w (delete it to generate new passwords)", path, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("devstack: auth: %w", err)
	}
	changed := false
	for _, u := range authUsers() {
		if a.passwords[u] == "" {
			a.passwords[u] = randomPassword()
			changed = true
		}
	}
	if changed {
		if err := writeJSON(path, a.passwords); err != nil {
			return nil, err
		}
	}
	services, err := os.ReadFile(filepath.Join(root, "deploy", "nats", "services.conf"))
	if err != nil {
		return nil, fmt.Errorf("devstack: auth: %w", err)
	}
	if err := os.WriteFile(filepath.Join(a.dir, "services.conf"), services, 0o600); err != nil {
		return nil, fmt.Errorf("devstack: auth: %w", err)
	}
	limits, err := readAccountLimits(os.Getenv)
	if err != nil {
		return nil, err
	}
	var conf strings.Builder
	data := struct {
		Passwords map[string]string
		Tenants   []string
		Limits    accountLimits
	}{a.passwords, devTenants(os.Getenv), limits}
	if err := natsConfTemplate.Execute(&conf, data); err != nil {
		return nil, fmt.Errorf("devstack: auth: %w", err)
	}
	if err := os.WriteFile(a.configPath(), []byte(conf.String()), 0o600); err != nil {
		return nil, fmt.Errorf("devstack: auth: %w", err)
	}
	return a, nil
}

// configPath is the generated nats-server configuration.
func (a *devAuth) configPath() string { return filepath.Join(a.dir, "nats.conf") }

// url is serverURL with user's credentials in it.
func (a *devAuth) url(serverURL, user string) string {
	u, err := url.Parse(serverURL)
	if err != nil {
		return serverURL
	}
	u.User = url.UserPassword(user, a.passwords[user])
	return u.String()
}

// natsContext is a nats CLI context file (<nats config>/context/<name>.json),
// which vigilctl reads too.
type natsContext struct {
	Description string `json:"description"`
	URL         string `json:"url"`
	User        string `json:"user"`
	Password    string `json:"password"`
	// CA, Cert and Key are the TLS files (TLS=1).
	CA   string `json:"ca,omitempty"`
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
}

// writeContexts writes the nats CLI contexts vigil (admin) and demo (the
// demo tenant) for serverURL into configDir (nats's config directory) and
// selects vigil, so that the nats CLI and vigilctl need no flags. With
// certs (TLS=1) the contexts verify the server with its CA and present
// the client certificate.
func (a *devAuth) writeContexts(configDir, serverURL string, certs *localstack.DevTLS) error {
	for name, c := range map[string]natsContext{
		adminContext: {Description: "vigil dev stack (make run): admin of the VIGIL account", URL: serverURL, User: adminUser, Password: a.passwords[adminUser]},
		demoContext:  {Description: "vigil dev stack (make run): the demo tenant", URL: serverURL, User: demoUser, Password: a.passwords[demoUser]},
	} {
		if certs != nil {
			c.CA, c.Cert, c.Key = certs.CA, certs.ClientCert, certs.ClientKey
		}
		if err := os.MkdirAll(filepath.Join(configDir, "context"), 0o700); err != nil {
			return fmt.Errorf("devstack: nats context: %w", err)
		}
		if err := writeJSON(filepath.Join(configDir, "context", name+".json"), c); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(configDir, "context.txt"), []byte(adminContext), 0o600); err != nil {
		return fmt.Errorf("devstack: nats context: %w", err)
	}
	return nil
}

// natsConfigDir is the nats CLI's configuration directory:
// $XDG_CONFIG_HOME/nats, else ~/.config/nats.
func natsConfigDir(getenv func(string) string) (string, error) {
	if xdg := getenv("XDG_CONFIG_HOME"); xdg != "" {
		return filepath.Join(xdg, "nats"), nil
	}
	if home := getenv("HOME"); home != "" {
		return filepath.Join(home, ".config", "nats"), nil
	}
	return "", errors.New("devstack: nats context: neither XDG_CONFIG_HOME nor HOME is set")
}

// writeJSON writes v to path, readable by its owner only.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("devstack: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("devstack: %w", err)
	}
	return nil
}

// randomPassword is 128 random bits in hex.
func randomPassword() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// natsConfTemplate is the dev stack's nats-server configuration, the
// layout of deploy/nats/auth.conf with the demo tenant and those of
// VIGIL_DEV_TENANTS: admin and the services (with
// deploy/nats/services.conf's permissions) in VIGIL, each tenant in an
// account of its own (DEMO) with the account limits, importing only its
// own command service (with share, so the server stamps its identity) and
// its results, progress and alerts.
var natsConfTemplate = template.Must(template.New("nats.conf").Funcs(template.FuncMap{"account": tenantAccount}).Parse(`# Generated by the vigil dev stack (make run) from deploy/nats: do not edit,
# do not commit. The passwords are in passwords.json next to this file.
include ./services.conf

accounts {
  VIGIL {
    jetstream: enabled
    users: [
      {user: admin, password: "{{index .Passwords "admin"}}"}
      {user: vigil-feed, password: "{{index .Passwords "vigil-feed"}}", permissions: $FEED}
      {user: vigil-indicators, password: "{{index .Passwords "vigil-indicators"}}", permissions: $INDICATORS}
      {user: vigil-alerts, password: "{{index .Passwords "vigil-alerts"}}", permissions: $ALERTS}
      {user: vigil-control, password: "{{index .Passwords "vigil-control"}}", permissions: $CONTROL}
    ]
    exports: [
{{- range .Tenants}}
      {service: "vigil.cmd.{{.}}.>", accounts: [{{account .}}]}
      {stream: "vigil.result.{{.}}.>", accounts: [{{account .}}]}
      {stream: "vigil.progress.{{.}}.>", accounts: [{{account .}}]}
      {stream: "vigil.alert.{{.}}.>", accounts: [{{account .}}]}
      {service: "$JS.API.DIRECT.GET.VIGIL_RESULTS.vigil.result.{{.}}.>", accounts: [{{account .}}]}
      {service: "$JS.API.DIRECT.GET.KV_VIGIL_STATE.$KV.VIGIL_STATE.user.{{.}}", accounts: [{{account .}}]}
{{- end}}
    ]
  }
{{- $l := .Limits}}{{$p := .Passwords}}
{{- range .Tenants}}
  {{account .}} {
    limits: {max_connections: {{$l.MaxConnections}}, max_subscriptions: {{$l.MaxSubscriptions}}, max_payload: {{$l.MaxPayload}}, max_leafnodes: 0}
    users: [
      {user: {{.}}, password: "{{index $p .}}", permissions: {
        publish: ["vigil.cmd.{{.}}.>", "$JS.API.DIRECT.GET.VIGIL_RESULTS.vigil.result.{{.}}.>", "$JS.API.DIRECT.GET.KV_VIGIL_STATE.$KV.VIGIL_STATE.user.{{.}}"]
        subscribe: ["vigil.result.{{.}}.>", "vigil.progress.{{.}}.>", "vigil.alert.{{.}}.>", "_INBOX.>", "_INBOX_{{.}}.>"]
      }}
    ]
    imports: [
      {service: {account: VIGIL, subject: "vigil.cmd.{{.}}.>"}, share: true}
      {stream: {account: VIGIL, subject: "vigil.result.{{.}}.>"}}
      {stream: {account: VIGIL, subject: "vigil.progress.{{.}}.>"}}
      {stream: {account: VIGIL, subject: "vigil.alert.{{.}}.>"}}
      {service: {account: VIGIL, subject: "$JS.API.DIRECT.GET.VIGIL_RESULTS.vigil.result.{{.}}.>"}}
      {service: {account: VIGIL, subject: "$JS.API.DIRECT.GET.KV_VIGIL_STATE.$KV.VIGIL_STATE.user.{{.}}"}}
    ]
  }
{{- end}}
}
`))
