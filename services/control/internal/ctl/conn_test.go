package ctl

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// writeContexts writes nats CLI contexts a and b under dir/nats, with b
// selected, and a broken one.
func writeContexts(t *testing.T, dir string) {
	t.Helper()
	ctxDir := filepath.Join(dir, "nats", "context")
	if err := os.MkdirAll(ctxDir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"context/a.json":      `{"description":"a","url":"nats://a:1","creds":"~/a.creds","inbox_prefix":"_A"}`,
		"context/b.json":      `{"url":"nats://b:2"}`,
		"context/broken.json": `{"url":`,
		"context.txt":         "b\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, "nats", name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestResolve(t *testing.T) {
	xdg := t.TempDir()
	writeContexts(t, xdg)
	emptyXDG := t.TempDir()
	home := t.TempDir()
	writeContexts(t, filepath.Join(home, ".config"))
	for _, tc := range []struct {
		name    string
		flags   connFlags
		env     map[string]string
		url     string
		creds   string
		context string
		err     error
	}{
		{name: "nothing set", env: map[string]string{"XDG_CONFIG_HOME": emptyXDG}, url: DefaultServer},
		{name: "no config directory", env: map[string]string{}, url: DefaultServer},
		{name: "NATS_URL", env: map[string]string{"XDG_CONFIG_HOME": emptyXDG, "NATS_URL": "nats://env:4"}, url: "nats://env:4"},
		{name: "--server beats NATS_URL", flags: connFlags{server: "nats://flag:5"},
			env: map[string]string{"XDG_CONFIG_HOME": emptyXDG, "NATS_URL": "nats://env:4"}, url: "nats://flag:5"},
		{name: "NATS_CREDS and --creds", flags: connFlags{creds: "/flag.creds"},
			env: map[string]string{"XDG_CONFIG_HOME": emptyXDG, "NATS_CREDS": "/env.creds"}, url: DefaultServer, creds: "/flag.creds"},
		{name: "selected context", env: map[string]string{"XDG_CONFIG_HOME": xdg}, url: "nats://b:2", context: "b"},
		{name: "~/.config when XDG_CONFIG_HOME is unset", env: map[string]string{"HOME": home}, url: "nats://b:2", context: "b"},
		{name: "NATS_CONTEXT beats the selected one", env: map[string]string{"XDG_CONFIG_HOME": xdg, "NATS_CONTEXT": "a", "HOME": "/home/op"},
			url: "nats://a:1", creds: "/home/op/a.creds", context: "a"},
		{name: "--context beats NATS_CONTEXT", flags: connFlags{context: "b"}, env: map[string]string{"XDG_CONFIG_HOME": xdg, "NATS_CONTEXT": "a"},
			url: "nats://b:2", context: "b"},
		{name: "NATS_URL beats the context's url", env: map[string]string{"XDG_CONFIG_HOME": xdg, "NATS_URL": "nats://env:4"},
			url: "nats://env:4", context: "b"},
		{name: "missing context", flags: connFlags{context: "nope"}, env: map[string]string{"XDG_CONFIG_HOME": xdg}, err: ErrContext},
		{name: "context name with a path", flags: connFlags{context: "../nats/context/a"}, env: map[string]string{"XDG_CONFIG_HOME": xdg}, err: ErrContext},
		{name: "broken context file", flags: connFlags{context: "broken"}, env: map[string]string{"XDG_CONFIG_HOME": xdg}, err: ErrContext},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep, err := tc.flags.resolve(func(k string) string { return tc.env[k] })
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !errors.Is(err, ErrUsage) {
					t.Fatalf("err = %v, want %v (and ErrUsage)", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ep.URL != tc.url || ep.Creds != tc.creds || ep.Context != tc.context {
				t.Errorf("resolved %q creds %q context %q, want %q %q %q", ep.URL, ep.Creds, ep.Context, tc.url, tc.creds, tc.context)
			}
		})
	}
}

func TestEndpointOptions(t *testing.T) {
	creds := filepath.Join(t.TempDir(), "op.creds")
	if err := os.WriteFile(creds, []byte("not checked here"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ep   endpoint
		n    int
		err  bool
	}{
		{name: "plain", ep: endpoint{URL: DefaultServer}, n: 2},
		{name: "creds", ep: endpoint{Creds: creds}, n: 3},
		{name: "missing creds file", ep: endpoint{Creds: creds + ".missing"}, err: true},
		{name: "user, inbox prefix, tls first", ep: endpoint{ctx: natsContext{User: "u", Password: "p", InboxPrefix: "_X", TLSFirst: true}}, n: 5},
		{name: "token", ep: endpoint{ctx: natsContext{Token: "t"}}, n: 3},
		{name: "bad nkey", ep: endpoint{ctx: natsContext{NKey: creds + ".missing"}}, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts, err := tc.ep.options()
			if tc.err {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil || len(opts) != tc.n {
				t.Fatalf("options: %d, %v; want %d", len(opts), err, tc.n)
			}
		})
	}
}
