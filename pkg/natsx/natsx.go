// Package natsx connects to NATS the way every vigil binary should
// (client name, reconnect forever with jittered backoff, logged disconnects,
// drain on shutdown) and creates or updates the JetStream streams and KV
// buckets of the contract.
package natsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/config"
)

// ConnectTimeout bounds how long Connect waits for the first connection.
const ConnectTimeout = 15 * time.Second

// Connect connects to cfg.URL as name: it retries the first connection
// until ctx ends or ConnectTimeout passes, then reconnects forever with
// jittered backoff, logging every disconnect and reconnect.
func Connect(ctx context.Context, cfg config.NATS, name string, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.PingInterval(10 * time.Second),
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
	nc, err := nats.Connect(cfg.URL, opts...)
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
