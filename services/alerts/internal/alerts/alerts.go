// Package alerts is the vigil-alerts service: it evaluates each user's
// rules on fresh indicator values and publishes and stores alerts, exactly
// one per event.
package alerts

import (
	"context"
	"io"
	"time"

	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/service"
)

// Config is vigil-alerts's configuration.
type Config struct {
	config.NATS
	config.Service
	config.Redis
	config.Postgres
}

// Validate checks every part of the configuration.
func (c Config) Validate() error {
	return config.ValidateAll(c.NATS, c.Service, c.Redis, c.Postgres)
}

// Run runs vigil-alerts until ctx ends.
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	var cfg Config
	if err := config.Load(&cfg, contract.ServiceAlerts, "evaluates each user's rules on fresh indicator values", args, stdout); err != nil {
		return err
	}
	rt, err := service.Boot(ctx, contract.ServiceAlerts, cfg.Service, cfg.NATS, &cfg, stdout)
	if err != nil {
		return err
	}
	defer rt.Close(context.Background())
	started := time.Now()
	svc, err := service.Start(rt.NC, service.Config{Svc: contract.SvcAlerts, Name: contract.ServiceAlerts,
		Description: "vigil alerts: evaluates each user's rules on fresh indicator values", Instance: rt.Instance}, rt.Log,
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
