// Package ctl is vigilctl, the operator's command line for vigil.
//
// vigilctl sends the control commands (pause, resume, reload-settings,
// switch-mode, force-backfill, clear-cache, cancel) to vigil-control on
// vigil.cmd.<user>.<command> and follows each to its final result on
// vigil.result.<user>.<id>, drawing the progress events of
// vigil.progress.<user>.<id> as it goes. It also shows the services'
// instances and every user's desired state and freshness (status), the
// audit trail of Postgres command_log (history) and the VIGIL_ALERTS stream
// (alerts), and backs up and restores the system of record (backup,
// restore: package backup). It connects like the nats CLI: --server, --creds and --context,
// else NATS_URL, NATS_CREDS and NATS_CONTEXT, else the selected nats CLI
// context.
//
// Exit codes: 0 when the command succeeded, 1 when it failed, was
// cancelled, timed out or could not be sent, 2 when it was rejected (by
// vigil-control or by vigilctl's own argument checks) and nothing was done.
package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"vigil.dev/pkg/contract"
)

// Exit codes of vigilctl.
const (
	// ExitOK: the command succeeded.
	ExitOK = 0
	// ExitFailed: the command failed, was cancelled or timed out, or
	// vigilctl could not reach NATS or Postgres.
	ExitFailed = 1
	// ExitRejected: the command was rejected, or the arguments are
	// invalid; nothing was done.
	ExitRejected = 2
)

// Sentinel errors of vigilctl; Main maps them to exit codes.
var (
	// ErrUsage reports invalid arguments or configuration.
	ErrUsage = errors.New("invalid arguments")
	// ErrRejected reports a command that vigil-control did not accept.
	ErrRejected = errors.New("rejected")
	// ErrFailed reports a command whose result is failed or cancelled.
	ErrFailed = errors.New("command did not succeed")
	// ErrNoResult reports a command whose result did not arrive in time.
	ErrNoResult = errors.New("no result in time")
)

// IO is what vigilctl uses of its process: output streams, environment and
// terminal detection. Tests and main pass their own.
type IO struct {
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads an environment variable.
	Getenv func(string) string
	// Terminal reports whether w is an interactive terminal and its width
	// in columns.
	Terminal func(w io.Writer) (isTerminal bool, width int)
}

// OS is the IO of the running process.
func OS() IO {
	return IO{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Terminal: fileTerminal}
}

// fileTerminal reports whether w is a terminal *os.File and its width.
func fileTerminal(w io.Writer) (bool, int) {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return false, 0
	}
	width, _, err := term.GetSize(int(f.Fd()))
	if err != nil || width <= 0 {
		width = 80
	}
	return true, width
}

// Main runs vigilctl with args (without the program name) and returns the
// exit code. Errors are printed to sys.Stderr as one line.
func Main(ctx context.Context, args []string, sys IO) int {
	if sys.Terminal == nil {
		sys.Terminal = func(io.Writer) (bool, int) { return false, 0 }
	}
	if sys.Getenv == nil {
		sys.Getenv = func(string) string { return "" }
	}
	root, started := newRoot(sys)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	if !*started && !errors.Is(err, ErrUsage) {
		// cobra rejected the command line before any subcommand ran.
		err = fmt.Errorf("%w: %w (see vigilctl --help)", ErrUsage, err)
	}
	fmt.Fprintf(sys.Stderr, "vigilctl: %s\n", oneLine(err))
	return ExitCode(err)
}

// oneLine is err's message on one line (driver errors may span several).
func oneLine(err error) string {
	return strings.NewReplacer("\n\t", "; ", "\n", "; ").Replace(strings.TrimSpace(err.Error()))
}

// ExitCode is the exit code for err: 0 for nil, 2 for a rejection or
// invalid arguments, 1 otherwise.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrRejected), errors.Is(err, ErrUsage):
		return ExitRejected
	}
	return ExitFailed
}

// newRoot builds the command tree. started becomes true once a subcommand's
// own code runs, so Main can tell cobra's parse errors from the command's.
func newRoot(sys IO) (*cobra.Command, *bool) {
	started := new(bool)
	root := &cobra.Command{
		Use:   "vigilctl",
		Short: "vigilctl operates vigil: commands, status, history and alerts",
		Long: `vigilctl operates vigil.

Commands go to vigil-control on vigil.cmd.<user>.<command>; vigilctl waits for
the final result on vigil.result.<user>.<id> (--no-wait returns after the ACK)
and shows progress events of long commands as they arrive.

Connection, as in the nats CLI: --server, --creds, --context, else NATS_URL,
NATS_CREDS, NATS_CONTEXT, else the selected nats CLI context
(~/.config/nats/context.txt), else nats://127.0.0.1:4222.

Exit codes: 0 succeeded; 1 failed, cancelled, timed out or unreachable;
2 rejected or invalid arguments (nothing was done).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(*cobra.Command, []string) {
			*started = true
		},
	}
	root.CompletionOptions.HiddenDefaultCmd = true
	root.SetOut(sys.Stdout)
	root.SetErr(sys.Stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	})
	conn := &connFlags{}
	conn.register(root)
	for _, spec := range commandSpecs {
		root.AddCommand(newCommandCmd(sys, conn, spec))
	}
	root.AddCommand(newStatusCmd(sys, conn), newTopCmd(sys, conn), newHistoryCmd(sys), newAlertsCmd(sys, conn), newTenantCmd(sys, conn))
	root.AddCommand(newBackupCmd(sys, conn), newRestoreCmd(sys, conn))
	return root, started
}

// flagError is an ErrUsage naming the flag and the problem of a contract
// validation error.
func flagError(flag string, err error) error {
	var fe contract.FieldError
	if errors.As(err, &fe) {
		return usageErrorf("--%s: %s", flag, fe.Problem)
	}
	return usageErrorf("--%s: %v", flag, err)
}

// usageErrorf is an ErrUsage with a message.
func usageErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}
