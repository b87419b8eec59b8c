package ctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// runMain runs Main with env and returns the exit code, stdout and stderr.
func runMain(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), args, IO{Stdout: &stdout, Stderr: &stderr,
		Getenv: func(k string) string { return env[k] }, Terminal: func(io.Writer) (bool, int) { return false, 0 }})
	return code, stdout.String(), stderr.String()
}

func TestMainExitCodes(t *testing.T) {
	noContexts := map[string]string{"XDG_CONFIG_HOME": t.TempDir()}
	unreachable := map[string]string{"XDG_CONFIG_HOME": t.TempDir(), "NATS_URL": "nats://127.0.0.1:1"}
	for _, tc := range []struct {
		name   string
		env    map[string]string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"help", noContexts, []string{"--help"}, ExitOK, "Usage:\n  vigilctl [command]", ""},
		{"no arguments shows help", noContexts, nil, ExitOK, "Available Commands:", ""},
		{"command help", noContexts, []string{"backfill", "-h"}, ExitOK, "--timeframes strings", ""},
		{"unknown command", noContexts, []string{"frobnicate"}, ExitRejected, "", `vigilctl: invalid arguments: unknown command "frobnicate" for "vigilctl" (see vigilctl --help)`},
		{"unknown flag", noContexts, []string{"pause", "--user", "demo", "--now"}, ExitRejected, "", "vigilctl: invalid arguments: unknown flag: --now"},
		{"missing user", noContexts, []string{"pause"}, ExitRejected, "", "vigilctl: invalid arguments: --user: is required"},
		{"user with a wildcard", noContexts, []string{"pause", "-u", "de*"}, ExitRejected, "", `--user: "de*" may contain only`},
		{"bad id", noContexts, []string{"pause", "-u", "demo", "--id", "a b"}, ExitRejected, "", "--id: "},
		{"zero timeout", noContexts, []string{"reload", "-u", "demo", "--timeout", "0s"}, ExitRejected, "", "--timeout: must be positive"},
		{"mode without mode", noContexts, []string{"mode", "-u", "demo"}, ExitRejected, "", "expected the mode"},
		{"mode with two", noContexts, []string{"mode", "a", "b", "-u", "demo"}, ExitRejected, "", "got 2 arguments"},
		{"plan and plan hash", noContexts, []string{"reload", "-u", "demo", "--plan", "--plan-hash", strings.Repeat("ab", 32)}, ExitRejected, "", "--plan and --plan-hash exclude each other"},
		{"bad plan hash", noContexts, []string{"clear-cache", "-u", "demo", "--scope", "all", "--plan-hash", "abc"}, ExitRejected, "", `--plan-hash: "abc" is not a plan hash`},
		{"pause has no plan", noContexts, []string{"pause", "-u", "demo", "--plan"}, ExitRejected, "", "unknown flag: --plan"},
		{"stray argument", noContexts, []string{"pause", "now", "-u", "demo"}, ExitRejected, "", "expected no arguments, got 1"},
		{"history without DATABASE_URL", noContexts, []string{"history", "-u", "demo"}, ExitRejected, "", "set DATABASE_URL"},
		{"history limit", noContexts, []string{"history", "-u", "demo", "-n", "0"}, ExitRejected, "", "--limit: must be positive"},
		{"alerts negative last", noContexts, []string{"alerts", "--last", "-1"}, ExitRejected, "", "--last: must not be negative"},
		{"status bad user", noContexts, []string{"status", "-u", "a.b"}, ExitRejected, "", "--user: "},
		{"missing context", noContexts, []string{"--context", "prod", "status"}, ExitRejected, "", `nats context "prod"`},
		{"backup without DATABASE_URL", noContexts, []string{"backup", "/tmp/b"}, ExitRejected, "", "set DATABASE_URL, or pass --no-postgres"},
		{"backup without directory", noContexts, []string{"backup", "--no-postgres"}, ExitRejected, "", "expected the backup directory, got 0 arguments"},
		{"restore negative replicas", noContexts, []string{"restore", "--replicas", "-1", "/tmp/b"}, ExitRejected, "", "--replicas: must not be negative"},
		{"restore of no backup", noContexts, []string{"restore", "/nonexistent-backup"}, ExitRejected, "", "/nonexistent-backup has no manifest.json"},
		{"unreachable", unreachable, []string{"pause", "-u", "demo"}, ExitFailed, "", "vigilctl: connect to NATS at nats://127.0.0.1:1: "},
		{"unreachable status", unreachable, []string{"status"}, ExitFailed, "", "connect to NATS"},
		{"history unreachable database", map[string]string{"DATABASE_URL": "postgres://nobody@127.0.0.1:1/x?connect_timeout=2"},
			[]string{"history", "-u", "demo"}, ExitFailed, "", "db: database unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runMain(t, tc.env, tc.args...)
			if code != tc.code || !strings.Contains(stdout, tc.stdout) || !strings.Contains(stderr, tc.stderr) {
				t.Errorf("vigilctl %v: exit %d, want %d\nstdout (want %q):\n%s\nstderr (want %q):\n%s", tc.args, code, tc.code, tc.stdout, stdout, tc.stderr, stderr)
			}
			if tc.code != ExitOK && strings.Count(stderr, "\n") != 1 {
				t.Errorf("an error should be one line on stderr, got %q", stderr)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{&RejectedError{Ack: contract.Ack{Command: contract.CmdPause, User: "demo", Error: &contract.Error{Code: contract.CodeBusy}}}, ExitRejected},
		{fmt.Errorf("wrapped: %w", ErrUsage), ExitRejected},
		{&FailedError{Result: contract.Result{Status: contract.StatusCancelled}}, ExitFailed},
		{ErrNoResult, ExitFailed},
		{errors.New("connect"), ExitFailed},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestErrorMessages(t *testing.T) {
	rejected := &RejectedError{Ack: contract.Ack{Command: contract.CmdForceBackfill, User: "demo",
		Error: &contract.Error{Code: contract.CodeInvalidPayload, Message: "symbol: is required"}}}
	if want := "force-backfill for demo rejected: invalid_payload: symbol: is required"; rejected.Error() != want {
		t.Errorf("RejectedError = %q, want %q", rejected, want)
	}
	failed := &FailedError{Result: contract.Result{Command: contract.CmdPause, User: "demo", Status: contract.StatusFailed,
		Error: &contract.Error{Code: contract.CodeTimeout, Message: "vigil-feed did not answer"}}}
	if want := "pause for demo failed: timeout: vigil-feed did not answer"; failed.Error() != want {
		t.Errorf("FailedError = %q, want %q", failed, want)
	}
	if !errors.Is(rejected, ErrRejected) || !errors.Is(failed, ErrFailed) {
		t.Error("typed errors do not unwrap to their sentinels")
	}
}
