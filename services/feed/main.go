// Command vigil-feed turns exchange market data into versioned candles in Redis and on JetStream.
// Run it with -h to list its environment variables.
package main

import (
	"vigil.dev/pkg/service"
	"vigil.dev/services/feed/internal/daemon"
)

func main() { service.Main("vigil-feed", daemon.Run) }
