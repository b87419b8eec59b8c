package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
)

// ctlRun is the outcome of one vigilctl run.
type ctlRun struct {
	args   []string
	stdout string
	stderr string
	code   int
}

func (r ctlRun) String() string {
	return fmt.Sprintf("vigilctl %s: exit %d\n--- stdout ---\n%s--- stderr ---\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// vigilctl runs the built binary with env and args and waits for it.
func (o *operatorStack) vigilctl(t *testing.T, env []string, args ...string) ctlRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, o.Bin("vigilctl"), args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	run := ctlRun{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		run.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("vigilctl %v: %v", args, err)
	}
	return run
}

// expectRun checks a run's exit code and that stdout and stderr match the
// patterns (multi-line mode).
func expectRun(t *testing.T, run ctlRun, code int, stdout, stderr []string) {
	t.Helper()
	if run.code != code {
		t.Errorf("exit %d, want %d\n%s", run.code, code, run)
		return
	}
	for _, p := range stdout {
		if !regexp.MustCompile("(?m)" + p).MatchString(run.stdout) {
			t.Errorf("stdout does not match %q\n%s", p, run)
		}
	}
	for _, p := range stderr {
		if !regexp.MustCompile("(?m)" + p).MatchString(run.stderr) {
			t.Errorf("stderr does not match %q\n%s", p, run)
		}
	}
}

// testVigilctl tests every vigilctl subcommand against the built binary,
// as an operator uses it, on the user ops. The subtests run in order:
// later ones read what earlier ones did (history, status).
func testVigilctl(t *testing.T, o *operatorStack) {
	env := o.env(t, "USER=ctl-operator")

	t.Run("pause", func(t *testing.T) {
		run := o.vigilctl(t, env, "pause", "--user", ctlUser, "--operator", "carol")
		expectRun(t, run, 0, []string{
			`^pause for ops accepted: id [0-9A-Z]{26}, \d+ ahead in the queue$`,
			`^pause for ops succeeded in \S+$`,
			`^  result\s+status: (paused|already_paused)$`,
			`^  steps\s+vigil-alerts pause\s+\d+/\d+ instances`,
		}, nil)
		a, f, i := strings.Index(run.stdout, "vigil-alerts pause"), strings.Index(run.stdout, "vigil-feed pause"), strings.Index(run.stdout, "vigil-indicators pause")
		if !(a >= 0 && a < f && f < i) {
			t.Errorf("steps are not alerts → feed → indicators\n%s", run)
		}
		if st, ok := o.state(ctlUser); !ok || !st.Paused {
			t.Errorf("desired state of ops after pause: %+v (found %v), want paused", st, ok)
		}
	})

	t.Run("resume", func(t *testing.T) {
		run := o.vigilctl(t, env, "resume", "--user", ctlUser, "--symbols", "BTC-USD,ETH-USD")
		expectRun(t, run, 0, []string{`^resume for ops succeeded`, `status: resumed`, `symbols: BTC-USD,ETH-USD`, `gap_filled: `}, nil)
		if st, ok := o.state(ctlUser); !ok || st.Paused || strings.Join(st.Symbols, ",") != "BTC-USD,ETH-USD" {
			t.Errorf("desired state of ops after resume: %+v, want running with BTC-USD,ETH-USD", st)
		}
	})

	t.Run("reload", func(t *testing.T) {
		run := o.vigilctl(t, env, "reload", "--user", ctlUser)
		expectRun(t, run, 0, []string{`^reload-settings for ops succeeded`, `reloaded: true`, `revision: \d+`}, nil)
	})

	t.Run("mode", func(t *testing.T) {
		run := o.vigilctl(t, env, "mode", "scalper-macdv", "--user", ctlUser)
		expectRun(t, run, 0, []string{`^switch-mode for ops succeeded`, `switched: true`, `to: scalper-macdv`, `from: position-monitor`}, nil)
		run = o.vigilctl(t, env, "switch-mode", "position-monitor", "--user", ctlUser)
		expectRun(t, run, 0, []string{`^switch-mode for ops succeeded`, `to: position-monitor`}, nil)
	})

	t.Run("backfill/progress-lines", func(t *testing.T) {
		run := o.vigilctl(t, env, "backfill", "--user", ctlUser, "--symbol", "BTC-USD", "--timeframes", "1h,4h")
		expectRun(t, run, 0,
			[]string{`^force-backfill for ops succeeded`, `backfilled: true`, `symbol: BTC-USD`, `candles: 1h=\d+ 4h=\d+`},
			[]string{`^progress: 0/2 timeframes`, `^progress: 1/2 timeframes`, `^progress: 2/2 timeframes`})
		m := regexp.MustCompile(`candles: 1h=(\d+) 4h=(\d+)`).FindStringSubmatch(run.stdout)
		if m == nil || m[1] == "0" || m[2] == "0" {
			t.Errorf("backfill wrote no candles\n%s", run)
		}
		if strings.Contains(run.stderr, "\r") || strings.Contains(run.stderr, "\x1b[") {
			t.Errorf("progress drew a bar although stderr is not a terminal\n%s", run)
		}
	})

	t.Run("backfill/progress-bar", func(t *testing.T) {
		out, code := o.vigilctlOnTerminal(t, env, "backfill", "--user", ctlUser, "--symbol", "ETH-USD", "--timeframes", "1h,4h")
		if code != 0 {
			t.Fatalf("exit %d\n%q", code, out)
		}
		for _, want := range []string{"\r\x1b[K[", "█", "100%  2/2 timeframes", "force-backfill for ops succeeded"} {
			if !strings.Contains(out, want) {
				t.Errorf("terminal output lacks %q\n%q", want, out)
			}
		}
		if strings.Contains(out, "progress: ") {
			t.Errorf("plain progress lines on a terminal\n%q", out)
		}
	})

	t.Run("clear-cache", func(t *testing.T) {
		run := o.vigilctl(t, env, "clear-cache", "--user", ctlUser, "--scope", "timeframe", "--symbol", "ETH-USD", "--timeframe", "1h")
		expectRun(t, run, 0, []string{`^clear-cache for ops succeeded`, `cleared: true`, `scope: timeframe`, `deletedCount: [1-9]\d*`}, nil)
	})

	t.Run("json", func(t *testing.T) {
		run := o.vigilctl(t, env, "pause", "--user", ctlUser, "--json")
		expectRun(t, run, 0, nil, nil)
		lines := strings.Split(strings.TrimSpace(run.stdout), "\n")
		if len(lines) != 2 {
			t.Fatalf("want an ACK line and a result line\n%s", run)
		}
		var ack contract.Ack
		var res contract.Result
		if err := json.Unmarshal([]byte(lines[0]), &ack); err != nil || !ack.Accepted || ack.Command != contract.CmdPause {
			t.Errorf("first line is not an accepted pause ACK (%v)\n%s", err, run)
		}
		if err := json.Unmarshal([]byte(lines[1]), &res); err != nil || res.ID != ack.ID || res.Status != contract.StatusSucceeded || res.User != ctlUser {
			t.Errorf("second line is not the pause's succeeded result (%v)\n%s", err, run)
		}
	})

	t.Run("no-wait", func(t *testing.T) {
		run := o.vigilctl(t, env, "resume", "--user", ctlUser, "--no-wait", "--id", "ops-resume-nowait")
		expectRun(t, run, 0, []string{`^resume for ops accepted: id ops-resume-nowait`, `vigil\.result\.ops\.ops-resume-nowait`}, nil)
		if strings.Contains(run.stdout, "succeeded") {
			t.Errorf("--no-wait printed a result\n%s", run)
		}
		if !pollUntil(30*time.Second, func() bool { _, ok := o.result(ctlUser, "ops-resume-nowait"); return ok }) {
			t.Errorf("the command sent with --no-wait has no result after 30s")
		}
	})

	t.Run("same-id", func(t *testing.T) {
		first := o.vigilctl(t, env, "reload", "--user", ctlUser, "--id", "ops-reload-same")
		expectRun(t, first, 0, []string{`^  id\s+ops-reload-same$`, `reloaded: true`}, nil)
		again := o.vigilctl(t, env, "reload", "--user", ctlUser, "--id", "ops-reload-same")
		expectRun(t, again, 0, []string{`^reload-settings for ops accepted: id ops-reload-same`, `^  id\s+ops-reload-same$`, `reloaded: true`}, nil)
		rev := regexp.MustCompile(`revision: (\d+)`)
		if a, b := rev.FindString(first.stdout), rev.FindString(again.stdout); a == "" || a != b {
			t.Errorf("the repeated id ran again: %q then %q", a, b)
		}
	})

	t.Run("rejected", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			args   []string
			stderr string
		}{
			{"invalid mode", []string{"mode", "turbo", "--user", ctlUser}, `^vigilctl: switch-mode for ops rejected: invalid_payload: .*mode`},
			{"unknown user", []string{"pause", "--user", "nobody"}, `^vigilctl: pause for nobody rejected: unknown_user`},
			{"missing symbol", []string{"backfill", "--user", ctlUser}, `^vigilctl: force-backfill for ops rejected: invalid_payload: .*symbol`},
			{"bad scope", []string{"clear-cache", "--user", ctlUser, "--scope", "everything"}, `^vigilctl: clear-cache for ops rejected: invalid_payload: .*scope`},
			{"bad timeframe", []string{"backfill", "--user", ctlUser, "--symbol", "BTC-USD", "--timeframes", "2h"}, `^vigilctl: force-backfill for ops rejected: invalid_payload: .*timeframes`},
			{"bad id", []string{"pause", "--user", ctlUser, "--id", "a.b"}, `^vigilctl: invalid arguments: --id: `},
			{"user with a dot", []string{"pause", "--user", "ops.other"}, `^vigilctl: invalid arguments: --user: "ops\.other" may contain only`},
			{"no user", []string{"reload"}, `^vigilctl: invalid arguments: --user: is required`},
			{"mode missing", []string{"mode", "--user", ctlUser}, `^vigilctl: invalid arguments: expected the mode`},
			{"unknown flag", []string{"pause", "--user", ctlUser, "--force"}, `^vigilctl: invalid arguments: unknown flag: --force`},
			{"unknown command", []string{"restart", "--user", ctlUser}, `^vigilctl: invalid arguments: unknown command "restart"`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				run := o.vigilctl(t, env, tc.args...)
				expectRun(t, run, 2, nil, []string{tc.stderr})
				if run.stdout != "" {
					t.Errorf("a rejection printed to stdout\n%s", run)
				}
			})
		}
		t.Run("json", func(t *testing.T) {
			run := o.vigilctl(t, env, "mode", "turbo", "--user", ctlUser, "--json")
			expectRun(t, run, 2, []string{`^\{.*"accepted":false.*"code":"invalid_payload"`}, nil)
		})
	})

	t.Run("failed", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, _, err := o.db.SeedUser(ctx, "test", brokenUser, []byte(`{"mode":"position-monitor","symbols":["not a symbol"]}`), "coinbase"); err != nil {
			t.Fatal(err)
		}
		run := o.vigilctl(t, env, "reload", "--user", brokenUser)
		expectRun(t, run, 1, []string{`^reload-settings for broken failed`, `^  error\s+\w+: .*symbols`},
			[]string{`^vigilctl: reload-settings for broken failed: `})
	})

	t.Run("unreachable", func(t *testing.T) {
		run := o.vigilctl(t, env, "pause", "--user", ctlUser, "--server", "nats://127.0.0.1:1")
		expectRun(t, run, 1, nil, []string{`^vigilctl: connect to NATS at nats://127\.0\.0\.1:1: `})
	})

	t.Run("status", func(t *testing.T) {
		run := o.vigilctl(t, env, "status")
		lines := []string{`^SERVICE\s+INSTANCE\s+ID\s+VERSION\s+REVISION\s+HOST\s+UPTIME\s+REQUESTS\s+ERRORS\s+PARTITIONS$`,
			`^USER\s+STATE\s+MODE\s+SYMBOLS\s+REVISION\s+QUEUE\s+FRESHNESS$`,
			`^ops\s+running\s+position-monitor\s+BTC-USD,ETH-USD\s+\d+\s+\S`,
			`^demo\s+(running|paused)\s`, `^broken\s`}
		for _, svc := range services {
			lines = append(lines, fmt.Sprintf(`^%s\s+%s-1\s+\w+\s+0\.1\.0\s`, svc, strings.TrimPrefix(svc, "vigil-")))
		}
		expectRun(t, run, 0, lines, nil)

		run = o.vigilctl(t, env, "status", "--user", ctlUser, "--json")
		expectRun(t, run, 0, nil, nil)
		var report struct {
			Services []struct {
				Service, Instance, ID, Version, Host string
				Started                              time.Time
			}
			Users []struct {
				User     string
				Paused   bool
				Mode     string
				Symbols  []string
				Revision int64
				Queue    *struct{ Queued, Jobs int }
				LagMs    map[string]int64 `json:"lag_ms"`
			}
		}
		if err := json.Unmarshal([]byte(run.stdout), &report); err != nil {
			t.Fatalf("status --json: %v\n%s", err, run)
		}
		if len(report.Services) != len(services) {
			t.Errorf("status lists %d instances, want %d\n%s", len(report.Services), len(services), run)
		}
		for _, s := range report.Services {
			if s.ID == "" || s.Version == "" || s.Host == "" || s.Started.IsZero() || !strings.HasSuffix(s.Instance, "-1") {
				t.Errorf("instance %+v lacks id, version, host, start or instance name", s)
			}
		}
		if len(report.Users) != 1 || report.Users[0].User != ctlUser {
			t.Fatalf("status --user ops lists %+v\n%s", report.Users, run)
		}
		u := report.Users[0]
		if u.Paused || u.Mode != "position-monitor" || strings.Join(u.Symbols, ",") != "BTC-USD,ETH-USD" || u.Revision <= 0 {
			t.Errorf("ops in status: %+v, want running position-monitor BTC-USD,ETH-USD with a revision", u)
		}
		if u.Queue == nil {
			t.Errorf("ops has no queue in status: no vigil-control instance answered vigil.svc.control.status")
		}
		if lag, ok := u.LagMs["BTC-USD"]; !ok || lag < 0 {
			t.Errorf("ops has no freshness for BTC-USD in status (lag_ms %v): vigil-feed's status must report users.ops.freshness.BTC-USD.lag_ms (docs/design.md, Status replies)", u.LagMs)
		}
	})

	t.Run("history", func(t *testing.T) {
		run := o.vigilctl(t, env, "history", "--user", ctlUser, "--limit", "50")
		expectRun(t, run, 0, []string{
			`^ACCEPTED\s+ID\s+COMMAND\s+STATUS\s+OPERATOR\s+NAME\s+TOOK\s+PAYLOAD\s+ERROR$`,
			`\s[0-9A-Z]{26}\s+pause\s+succeeded\s+local\s+carol\s`,
			`\sresume\s+succeeded\s+local\s+ctl-operator\s+\S+\s+\{"symbols":\["BTC-USD","ETH-USD"\]\}`,
			`\sforce-backfill\s+succeeded\s`,
			`\sswitch-mode\s+succeeded\s`,
			`\sclear-cache\s+succeeded\s`,
		}, nil)
		if n := strings.Count(run.stdout, "ops-reload-same"); n != 1 {
			t.Errorf("ops-reload-same appears %d times in the history, want once\n%s", n, run)
		}
		if strings.Contains(run.stdout, "turbo") {
			t.Errorf("a rejected command is in the history\n%s", run)
		}

		run = o.vigilctl(t, env, "history", "--user", ctlUser, "--limit", "2", "--json")
		expectRun(t, run, 0, nil, nil)
		var entries []map[string]any
		dec := json.NewDecoder(strings.NewReader(run.stdout))
		for {
			var e map[string]any
			if err := dec.Decode(&e); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("history --json: %v\n%s", err, run)
			}
			entries = append(entries, e)
		}
		if len(entries) != 2 || entries[0]["id"] != "ops-resume-nowait" || entries[1]["id"] != "ops-reload-same" ||
			entries[1]["command"] != "reload-settings" || entries[1]["status"] != "succeeded" || entries[1]["user"] != ctlUser {
			t.Errorf("history --limit 2 --json: %v, want the last two commands of ops, oldest first", entries)
		}

		noDB := withoutEnv(env, "DATABASE_URL")
		run = o.vigilctl(t, noDB, "history", "--user", ctlUser)
		expectRun(t, run, 2, nil, []string{`^vigilctl: invalid arguments: history reads Postgres command_log: set DATABASE_URL`})
	})

	t.Run("alerts", func(t *testing.T) {
		const ghost = "ghost"
		for i := 1; i <= 3; i++ {
			publishAlert(t, o.Conn(), ghost, fmt.Sprintf("rule-%d", i), int64(1_800_000_000+3600*i))
		}
		run := o.vigilctl(t, env, "alerts", "--user", ghost, "--last", "2")
		expectRun(t, run, 0, []string{`^\S+  ghost  rule-2  BTC-USD 1h  threshold  value=\d+`, `^\S+  ghost  rule-3  `}, nil)
		if strings.Contains(run.stdout, "rule-1") || strings.Index(run.stdout, "rule-2") > strings.Index(run.stdout, "rule-3") {
			t.Errorf("want the last two alerts, oldest first\n%s", run)
		}
		run = o.vigilctl(t, env, "alerts", "--user", ghost, "--last", "5", "--json")
		expectRun(t, run, 0, []string{`^\{"id":"ghost\.rule-1\.`, `^\{"id":"ghost\.rule-3\.`}, nil)
		run = o.vigilctl(t, env, "alerts", "--user", "nobody-alerted")
		expectRun(t, run, 0, []string{`^no alerts`}, nil)

		follow := o.startVigilctl(t, env, "alerts", "--user", ghost, "--last", "1", "--follow")
		if !pollUntil(20*time.Second, func() bool { return strings.Contains(follow.out.String(), "rule-3") }) {
			t.Fatalf("alerts --follow did not show the last alert\n%s", follow.out.String())
		}
		publishAlert(t, o.Conn(), ghost, "rule-4", 1_800_000_000+3600*4)
		if !pollUntil(20*time.Second, func() bool { return strings.Contains(follow.out.String(), "rule-4") }) {
			t.Fatalf("alerts --follow did not show a new alert\n%s", follow.out.String())
		}
		_ = syscall.Kill(follow.cmd.Process.Pid, syscall.SIGINT)
		if !follow.wait(10*time.Second) || follow.exitCode() != 0 {
			t.Errorf("alerts --follow did not end cleanly on SIGINT: exit %d\n%s", follow.exitCode(), follow.out.String())
		}
		if strings.Contains(follow.out.String(), "rule-2") {
			t.Errorf("--last 1 showed more than one past alert\n%s", follow.out.String())
		}
	})

	t.Run("connection", func(t *testing.T) {
		noURL := withoutEnv(env, "NATS_URL")
		xdg := t.TempDir()
		ctxDir := filepath.Join(xdg, "nats", "context")
		if err := os.MkdirAll(ctxDir, 0o755); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(map[string]string{"url": o.NATSURL, "description": "test"})
		if err := os.WriteFile(filepath.Join(ctxDir, "vigil-test.json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		noURL = append(withoutEnv(noURL, "XDG_CONFIG_HOME"), "XDG_CONFIG_HOME="+xdg)
		statusOK := []string{`^ops\s+running`}

		run := o.vigilctl(t, noURL, "--context", "vigil-test", "status", "--user", ctlUser)
		expectRun(t, run, 0, statusOK, nil)
		run = o.vigilctl(t, append(noURL, "NATS_CONTEXT=vigil-test"), "status", "--user", ctlUser)
		expectRun(t, run, 0, statusOK, nil)
		if err := os.WriteFile(filepath.Join(xdg, "nats", "context.txt"), []byte("vigil-test"), 0o600); err != nil {
			t.Fatal(err)
		}
		run = o.vigilctl(t, noURL, "status", "--user", ctlUser)
		expectRun(t, run, 0, statusOK, nil)

		run = o.vigilctl(t, append(noURL, "NATS_URL=nats://127.0.0.1:1"), "--server", o.NATSURL, "status", "--user", ctlUser)
		expectRun(t, run, 0, statusOK, nil)
		run = o.vigilctl(t, append(noURL, "NATS_URL=nats://127.0.0.1:1"), "status", "--user", ctlUser)
		expectRun(t, run, 1, nil, []string{`^vigilctl: connect to NATS at nats://127\.0\.0\.1:1 \(context vigil-test\): `})
		run = o.vigilctl(t, noURL, "--context", "missing", "status")
		expectRun(t, run, 2, nil, []string{`^vigilctl: invalid arguments: nats context "missing": `})
		run = o.vigilctl(t, env, "pause", "--user", ctlUser, "--creds", filepath.Join(xdg, "none.creds"))
		expectRun(t, run, 2, nil, []string{`^vigilctl: invalid arguments: credentials: `})
	})
}

// withoutEnv is env without the variable name.
func withoutEnv(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// startVigilctl starts vigilctl in the background (stopped at the end of
// the test).
func (o *operatorStack) startVigilctl(t *testing.T, env []string, args ...string) *script {
	t.Helper()
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = strconv.Quote(a)
	}
	s, err := startScript(recipe{Name: "vigilctl", Script: "exec " + strconv.Quote(o.Bin("vigilctl")) + " " + strings.Join(quoted, " ")}, env, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
	return s
}

// vigilctlOnTerminal runs vigilctl with a pseudo-terminal as stdin, stdout
// and stderr and returns everything it wrote, unchanged.
func (o *operatorStack) vigilctlOnTerminal(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(o.Bin("vigilctl"), args...)
	cmd.Env = env
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 160})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(&out, bufio.NewReader(tty))
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err2 error
	select {
	case err2 = <-done:
	case <-time.After(3 * time.Minute):
		_ = cmd.Process.Kill()
		err2 = <-done
	}
	<-copied
	var exit *exec.ExitError
	if errors.As(err2, &exit) {
		return out.String(), exit.ExitCode()
	}
	if err2 != nil {
		t.Fatal(err2)
	}
	return out.String(), 0
}

// publishAlert publishes an alert of user's rule on bar start to
// VIGIL_ALERTS, as vigil-alerts does.
func publishAlert(t *testing.T, nc *nats.Conn, user, rule string, barStart int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	a := contract.Alert{ID: contract.AlertID(user, rule, barStart), User: user, UserID: 99, ExchangeID: 1, RuleID: rule,
		Kind: contract.RuleThreshold, Symbol: "BTC-USD", Timeframe: contract.TF1h, BarStart: barStart,
		Message: "price above 1", Value: 64000, FiredAt: time.Now().UTC()}
	b, _ := json.Marshal(a)
	msg := nats.NewMsg(contract.AlertIngestSubject(user, rule))
	msg.Data = b
	msg.Header.Set(jetstream.MsgIDHeader, a.ID)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
}
