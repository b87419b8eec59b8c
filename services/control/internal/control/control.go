// Package control is the vigil-control service, the operator's control
// plane: it takes the runtime commands on vigil.cmd.<user>.<command>, acks
// them once durably recorded and runs each as an ordered sequence across the
// instances of the other services.
package control

import (
	"context"
	"io"
	"time"

	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/service"
)

// Config is vigil-control's configuration.
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

// Run runs vigil-control until ctx ends.
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	var cfg Config
	if err := config.Load(&cfg, contract.ServiceControl, "the operator's control plane", args, stdout); err != nil {
		return err
	}
	rt, err := service.Boot(ctx, contract.ServiceControl, cfg.Service, cfg.NATS, &cfg, stdout)
	if err != nil {
		return err
	}
	defer rt.Close(context.Background())
	started := time.Now()
	svc, err := service.Start(rt.NC, service.Config{Svc: "", Name: contract.ServiceControl,
		Description: "vigil control: the operator's control plane", Instance: rt.Instance}, rt.Log,
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
