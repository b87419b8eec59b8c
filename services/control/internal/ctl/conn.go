package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
	"vigil.dev/pkg/config"
)

// DefaultServer is the NATS URL used when nothing else names one.
const DefaultServer = "nats://127.0.0.1:4222"

// connectTimeout bounds the connection to NATS.
const connectTimeout = 5 * time.Second

// ErrContext reports a nats CLI context that cannot be read; it wraps
// ErrUsage.
var ErrContext = fmt.Errorf("%w: nats context", ErrUsage)

// connFlags are the connection flags every subcommand shares.
type connFlags struct {
	server  string
	creds   string
	context string
}

func (c *connFlags) register(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVarP(&c.server, "server", "s", "", "NATS server URLs, comma separated (default $NATS_URL, the context's url, or "+DefaultServer+")")
	f.StringVar(&c.creds, "creds", "", "NATS credentials file (default $NATS_CREDS or the context's creds)")
	f.StringVar(&c.context, "context", "", "nats CLI context to use (default $NATS_CONTEXT, else the selected context)")
}

// natsContext is the part of a nats CLI context file
// (~/.config/nats/context/<name>.json) that vigilctl uses.
type natsContext struct {
	URL         string `json:"url"`
	Creds       string `json:"creds"`
	User        string `json:"user"`
	Password    string `json:"password"`
	Token       string `json:"token"`
	NKey        string `json:"nkey"`
	Cert        string `json:"cert"`
	Key         string `json:"key"`
	CA          string `json:"ca"`
	InboxPrefix string `json:"inbox_prefix"`
	TLSFirst    bool   `json:"tls_first"`
}

// endpoint is where and how to connect, resolved from flags, environment
// and context.
type endpoint struct {
	URL   string
	Creds string
	// Context is the nats CLI context in use ("" for none) and ctx its
	// settings.
	Context string
	ctx     natsContext
}

// resolve applies the nats CLI's precedence: flag, then environment, then
// the context (named by --context, $NATS_CONTEXT or the selected one),
// then the default URL.
func (c *connFlags) resolve(getenv func(string) string) (endpoint, error) {
	var ep endpoint
	name := firstNonEmpty(c.context, getenv("NATS_CONTEXT"))
	dir := natsConfigDir(getenv)
	if name == "" && dir != "" {
		if b, err := os.ReadFile(filepath.Join(dir, "context.txt")); err == nil {
			name = strings.TrimSpace(string(b))
		}
	}
	if name != "" {
		nctx, err := loadContext(dir, name, getenv)
		if err != nil {
			return ep, err
		}
		ep.Context, ep.ctx = name, nctx
	}
	ep.URL = firstNonEmpty(c.server, getenv("NATS_URL"), ep.ctx.URL, DefaultServer)
	ep.Creds = expandHome(firstNonEmpty(c.creds, getenv("NATS_CREDS"), ep.ctx.Creds), getenv)
	return ep, nil
}

// natsConfigDir is $XDG_CONFIG_HOME/nats, else ~/.config/nats.
func natsConfigDir(getenv func(string) string) string {
	if xdg := getenv("XDG_CONFIG_HOME"); xdg != "" {
		return filepath.Join(xdg, "nats")
	}
	if home := getenv("HOME"); home != "" {
		return filepath.Join(home, ".config", "nats")
	}
	return ""
}

// loadContext reads <dir>/context/<name>.json.
func loadContext(dir, name string, getenv func(string) string) (natsContext, error) {
	var nctx natsContext
	if strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return nctx, fmt.Errorf("%w %q: not a context name", ErrContext, name)
	}
	if dir == "" {
		return nctx, fmt.Errorf("%w %q: neither XDG_CONFIG_HOME nor HOME is set", ErrContext, name)
	}
	path := filepath.Join(dir, "context", name+".json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nctx, fmt.Errorf("%w %q: %w (create it with: nats context add %s --server URL)", ErrContext, name, err, name)
	}
	if err := json.Unmarshal(b, &nctx); err != nil {
		return nctx, fmt.Errorf("%w %q: %s is not a context file: %w", ErrContext, name, path, err)
	}
	for _, p := range []*string{&nctx.NKey, &nctx.Cert, &nctx.Key, &nctx.CA} {
		*p = expandHome(*p, getenv)
	}
	return nctx, nil
}

// expandHome replaces a leading ~/ with $HOME/.
func expandHome(path string, getenv func(string) string) string {
	if rest, ok := strings.CutPrefix(path, "~/"); ok && getenv("HOME") != "" {
		return filepath.Join(getenv("HOME"), rest)
	}
	return path
}

// maskURLs masks the password of each URL of a comma-separated list.
func maskURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		parts[i] = config.MaskURL(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

// options are the nats.go options of the endpoint.
func (ep endpoint) options() ([]nats.Option, error) {
	opts := []nats.Option{nats.Name("vigilctl"), nats.Timeout(connectTimeout)}
	if ep.Creds != "" {
		if _, err := os.Stat(ep.Creds); err != nil {
			return nil, fmt.Errorf("%w: credentials: %w", ErrUsage, err)
		}
		opts = append(opts, nats.UserCredentials(ep.Creds))
	}
	c := ep.ctx
	switch {
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	}
	if c.NKey != "" {
		opt, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, fmt.Errorf("%w %q: nkey: %w", ErrContext, ep.Context, err)
		}
		opts = append(opts, opt)
	}
	if c.Cert != "" && c.Key != "" {
		opts = append(opts, nats.ClientCert(c.Cert, c.Key))
	}
	if c.CA != "" {
		opts = append(opts, nats.RootCAs(c.CA))
	}
	if c.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(c.InboxPrefix))
	}
	if c.TLSFirst {
		opts = append(opts, nats.TLSHandshakeFirst())
	}
	return opts, nil
}

// connect resolves the endpoint and connects to it.
func (c *connFlags) connect(ctx context.Context, getenv func(string) string) (*nats.Conn, error) {
	ep, err := c.resolve(getenv)
	if err != nil {
		return nil, err
	}
	opts, err := ep.options()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	nc, err := nats.Connect(ep.URL, opts...)
	if err != nil {
		where := maskURLs(ep.URL)
		if ep.Context != "" {
			where += " (context " + ep.Context + ")"
		}
		return nil, fmt.Errorf("connect to NATS at %s: %w", where, err)
	}
	return nc, nil
}
