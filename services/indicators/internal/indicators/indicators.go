// Package indicators is the vigil-indicators service: it consumes candle
// updates, keeps incremental TA-Lib-exact indicator state per series, stores
// the series in Redis and publishes them for alerts.
package indicators

import (
	"context"
	"io"
	"time"

	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/service"
)

// Config is vigil-indicators's configuration.
type Config struct {
	config.NATS
	config.Service
	config.Redis
}

// Validate checks every part of the configuration.
func (c Config) Validate() error {
	return config.ValidateAll(c.NATS, c.Service, c.Redis)
}

// Run runs vigil-indicators until ctx ends.
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	var cfg Config
	if err := config.Load(&cfg, contract.ServiceIndicators, "keeps incremental indicator series per candle series", args, stdout); err != nil {
		return err
	}
	rt, err := service.Boot(ctx, contract.ServiceIndicators, cfg.Service, cfg.NATS, &cfg, stdout)
	if err != nil {
		return err
	}
	defer rt.Close(context.Background())
	started := time.Now()
	svc, err := service.Start(rt.NC, service.Config{Svc: contract.SvcIndicators, Name: contract.ServiceIndicators,
		Description: "vigil indicators: keeps incremental indicator series per candle series", Instance: rt.Instance}, rt.Log,
		func(context.Context) any {
			return map[string]any{"instance": rt.Instance, "started_at": started}
		})
	if err != nil {
		return err
	}
	rt.Log.Info("running", "id", svc.ID())
	<-ctx.Done()
	rt.Log.Info("shutting down")
	return svc.Shutdown(cfg.ShutdownTimeout)
}
