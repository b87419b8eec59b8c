// Package feed is the vigil-feed service: it turns market data from a
// source (simulator, Coinbase, replay) into versioned candles of every
// user's symbols and timeframes, stored in Redis and published on
// JetStream.
package feed

import (
	"context"
	"fmt"
	"io"
	"time"

	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/service"
)

// Config is vigil-feed's configuration.
type Config struct {
	config.NATS
	config.Service
	config.Redis
	Source string `env:"VIGIL_FEED_SOURCE" envDefault:"sim" help:"market data source: sim, coinbase or replay"`
}

// Validate checks every part of the configuration.
func (c Config) Validate() error {
	if err := config.ValidateAll(c.NATS, c.Service, c.Redis); err != nil {
		return err
	}
	switch c.Source {
	case "sim", "coinbase", "replay":
		return nil
	}
	return fmt.Errorf("VIGIL_FEED_SOURCE: %q is not one of sim, coinbase, replay", c.Source)
}

// Run runs vigil-feed until ctx ends.
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	var cfg Config
	if err := config.Load(&cfg, contract.ServiceFeed, "turns exchange market data into versioned candles", args, stdout); err != nil {
		return err
	}
	rt, err := service.Boot(ctx, contract.ServiceFeed, cfg.Service, cfg.NATS, &cfg, stdout)
	if err != nil {
		return err
	}
	defer rt.Close(context.Background())
	started := time.Now()
	svc, err := service.Start(rt.NC, service.Config{Svc: contract.SvcFeed, Name: contract.ServiceFeed,
		Description: "vigil feed: market data to versioned candles", Instance: rt.Instance}, rt.Log,
		func(context.Context) any {
			return map[string]any{"instance": rt.Instance, "source": cfg.Source, "started_at": started}
		})
	if err != nil {
		return err
	}
	rt.Log.Info("running", "id", svc.ID())
	<-ctx.Done()
	rt.Log.Info("shutting down")
	return svc.Shutdown(cfg.ShutdownTimeout)
}
