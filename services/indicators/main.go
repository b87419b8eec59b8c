// Command vigil-indicators keeps incremental TA-Lib-exact indicator series per candle series.
// Run it with -h to list its environment variables.
package main

import (
	"vigil.dev/pkg/service"
	"vigil.dev/services/indicators/internal/daemon"
)

func main() { service.Main("vigil-indicators", daemon.Run) }
