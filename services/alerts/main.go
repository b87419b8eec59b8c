// Command vigil-alerts evaluates each user's alert rules on fresh indicator values.
// Run it with -h to list its environment variables.
package main

import (
	"vigil.dev/pkg/service"
	"vigil.dev/services/alerts/internal/daemon"
)

func main() { service.Main("vigil-alerts", daemon.Run) }
