// Command vigilctl is the operator's command line for vigil: it sends
// control commands to vigil-control and follows them to their result, and
// shows status, command history and alerts. Run it with -h for the
// subcommands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"vigil.dev/services/control/internal/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Main(ctx, os.Args[1:], ctl.OS())
	stop()
	os.Exit(code)
}
