// Command vigil-control the operator's control plane: acknowledged, durable, coordinated commands.
// Run it with -h to list its environment variables.
package main

import (
	"vigil.dev/pkg/service"
	"vigil.dev/services/control/internal/daemon"
)

func main() { service.Main("vigil-control", daemon.Run) }
