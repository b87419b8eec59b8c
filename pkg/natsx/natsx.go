// Package natsx connects to NATS the way every vigil binary should
// (client name, reconnect forever with jittered backoff, logged disconnects,
// drain on shutdown), creates or updates the JetStream streams and KV
// buckets of the contract, and reads from a stream's leader what must see
// the last write (KVGet).
package natsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/config"
)

// ConnectTimeout bounds how long Connect waits for the first connection.
const ConnectTimeout = 15 * time.Second

// Connect connects to cfg.URL as name: it retries the first connection
// until ctx ends or ConnectTimeout passes, then reconnects forever with
// jittered backoff, logging every disconnect and reconnect. A dead server
// is detected by pings within 4-6 s.
func Connect(ctx context.Context, cfg config.NATS, name string, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		// The servers are tried in the order NATS_URL lists them, not
		// shuffled: a host's services list their own host's node first,
		// so a host that dies takes only its own services' connections
		// with it (a service on another host connected to the dead node
		// would stop until its pings notice, 4-6 s, and its
		// subscriptions would linger on the others until theirs do).
		nats.DontRandomize(),
		// A server that died without closing the socket (its host gone)
		// is noticed after 2 unanswered pings: 4-6 s, not the client's
		// default 2-4 minutes, so the client moves to another node.
		nats.PingInterval(2 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("nats async error", "subject", subject, "err", err)
		}),
	}
	if cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	}
	url, authOpts := passwordFromFile(cfg)
	opts = append(opts, authOpts...)
	opts = append(opts, tlsOptions(cfg)...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats connect %s: %w", config.MaskURL(cfg.URL), err)
	}
	deadline := time.NewTimer(ConnectTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			nc.Close()
			if err := nc.LastError(); err != nil {
				return nil, fmt.Errorf("nats connect %s: %w (%w)", config.MaskURL(cfg.URL), ctx.Err(), err)
			}
			return nil, ctx.Err()
		case <-deadline.C:
			nc.Close()
			err := nc.LastError()
			if err == nil {
				err = errors.New("no server answered")
			}
			return nil, fmt.Errorf("nats connect %s: not connected after %s: %w", config.MaskURL(cfg.URL), ConnectTimeout, err)
		case <-tick.C:
		}
	}
	log.Info("nats connected", "url", nc.ConnectedUrlRedacted())
	return nc, nil
}

// passwordFromFile is the URL to dial and the options for
// NATS_PASSWORD_FILE: the user is taken out of the URL (nats.go prefers a
// URL's user to a handler) and the password read from the file on every
// (re)connect.
func passwordFromFile(cfg config.NATS) (string, []nats.Option) {
	if cfg.PasswordFile == "" {
		return cfg.URL, nil
	}
	var user string
	urls := strings.Split(cfg.URL, ",")
	for i, raw := range urls {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || u.User == nil {
			continue
		}
		user = u.User.Username()
		u.User = nil
		urls[i] = u.String()
	}
	return strings.Join(urls, ","), []nats.Option{nats.UserInfoHandler(func() (string, string) {
		// An unreadable file fails this attempt with an authorization
		// error; the next reconnect reads it again.
		password, _ := config.ReadSecretFile("NATS_PASSWORD_FILE", cfg.PasswordFile)
		return user, password
	})}
}

// tlsOptions are the options for NATS_CA, NATS_CERT and NATS_KEY: TLS
// with the files read again on every (re)connect (nats.go's callbacks),
// so replaced certificates and CA bundles are used from the next
// reconnect on; nats.go verifies the server's certificate for the host it
// dials. Without them a tls:// URL still gets TLS, verified with the
// system's roots.
func tlsOptions(cfg config.NATS) []nats.Option {
	files := cfg.TLSFiles()
	var certCB nats.TLSCertHandler
	var rootsCB nats.RootCAsHandler
	if files.Cert != "" {
		certCB = files.Certificate
	}
	if files.CA != "" {
		rootsCB = files.RootCAs
	}
	if certCB == nil && rootsCB == nil {
		return nil
	}
	return []nats.Option{nats.ClientTLSConfig(certCB, rootsCB)}
}

// Drain drains nc and waits until it is closed or ctx ends.
func Drain(ctx context.Context, nc *nats.Conn) error {
	if nc == nil || nc.IsClosed() {
		return nil
	}
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return err
	}
	select {
	case <-closed:
		return nil
	case <-ctx.Done():
		nc.Close()
		return fmt.Errorf("nats drain: %w", ctx.Err())
	}
}
