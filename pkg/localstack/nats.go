package localstack

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATS is an embedded nats-server with JetStream started by StartNATS. The
// embedded *server.Server gives access to everything else the server offers
// (ClientURL, JetStreamEnabled, Shutdown, ...).
type NATS struct {
	*server.Server
	opts      Options
	dir, host string
	port      int
}

// StartNATS runs an embedded NATS server with JetStream, its store in
// opts.Dir, listening on opts.Host (default 127.0.0.1) and opts.Port (0 or
// -1: a free port), and waits until it accepts connections. The server does
// not log and does not handle signals.
func StartNATS(ctx context.Context, opts Options) (*NATS, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("%w: Dir %q: %w", ErrInvalidOptions, opts.Dir, err)
	}
	if err := ensureDir(dir, 0o755); err != nil {
		return nil, err
	}
	host := opts.Host
	if host == "" {
		host = loopback
	}
	port := opts.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	sopts, err := natsServerOptions(opts, dir, host, port)
	if err != nil {
		return nil, err
	}
	srv, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("%w: nats-server: %w", ErrInvalidOptions, err)
	}
	if port > 0 {
		// The server would only report a taken port by never becoming
		// ready: check first to fail fast with a clear message.
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return nil, fmt.Errorf("%w: nats-server cannot listen on %s:%d: %w", ErrInvalidOptions, host, port, err)
		}
		l.Close()
	}
	ctx, cancel := withStartDeadline(ctx)
	defer cancel()
	go srv.Start()
	for !srv.ReadyForConnections(100 * time.Millisecond) {
		if ctx.Err() != nil {
			srv.Shutdown()
			srv.WaitForShutdown()
			return nil, fmt.Errorf("%w: nats-server on %s:%d did not accept connections: %w", ErrNotReady, host, port, context.Cause(ctx))
		}
	}
	return &NATS{Server: srv, opts: opts, dir: dir, host: host, port: port}, nil
}

// natsServerOptions are the server options of opts: its configuration file
// (when set), then the address, the JetStream store and the TLS files.
func natsServerOptions(opts Options, dir, host string, port int) (*server.Options, error) {
	sopts := &server.Options{}
	if opts.NATSConfig != "" {
		var err error
		if sopts, err = server.ProcessConfigFile(opts.NATSConfig); err != nil {
			return nil, fmt.Errorf("%w: NATSConfig: %w", ErrInvalidOptions, err)
		}
	}
	sopts.Host, sopts.Port, sopts.JetStream, sopts.StoreDir = host, port, true, dir
	sopts.NoLog, sopts.NoSigs = true, true
	if opts.TLS != nil {
		cfg, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: opts.TLS.CertFile, KeyFile: opts.TLS.KeyFile, CaFile: opts.TLS.CAFile})
		if err != nil {
			return nil, fmt.Errorf("%w: TLS: %w", ErrInvalidOptions, err)
		}
		if opts.TLS.CAFile != "" {
			// Client certificates are optional, verified when sent.
			cfg.ClientAuth = tls.VerifyClientCertIfGiven
		}
		sopts.TLSConfig, sopts.TLS, sopts.TLSTimeout = cfg, true, 2
		sopts.TLSCert, sopts.TLSKey, sopts.TLSCaCert = opts.TLS.CertFile, opts.TLS.KeyFile, opts.TLS.CAFile
	}
	return sopts, nil
}

// Reload reads the configuration file (Options.NATSConfig: users,
// passwords, permissions) and the TLS files again and applies them to the
// running server, as nats-server --signal reload does: connections whose
// credentials are no longer valid are closed, new connections get the
// new certificate, existing ones keep theirs.
func (n *NATS) Reload() error {
	sopts, err := natsServerOptions(n.opts, n.dir, n.host, n.port)
	if err != nil {
		return err
	}
	if err := n.ReloadOptions(sopts); err != nil {
		return fmt.Errorf("localstack: nats reload: %w", err)
	}
	return nil
}

// URL is the URL clients connect to: nats://host:port, or tls://host:port
// with Options.TLS.
func (n *NATS) URL() string {
	if n.opts.TLS != nil {
		return "tls://" + strings.TrimPrefix(strings.TrimPrefix(n.ClientURL(), "nats://"), "tls://")
	}
	return n.ClientURL()
}

// Stop shuts the server down and waits until it has stopped.
func (n *NATS) Stop() error {
	n.Shutdown()
	n.WaitForShutdown()
	return nil
}
