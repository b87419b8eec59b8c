package daemon

import (
	"context"

	"vigil.dev/pkg/service"
)

// Instance is a running instance, for the tests.
type Instance = instance

// Options are the options of start, for the tests.
type Options = options

// Start is start, for the tests: they boot the runtime themselves and kill
// an instance by ending ctx and closing its connection.
func Start(ctx context.Context, cfg Config, rt *service.Runtime, opts Options) (*Instance, error) {
	return start(ctx, cfg, rt, opts)
}

// Members are the live control instances as this instance sees them.
func (i *instance) Members() []string { return i.group.Members() }
