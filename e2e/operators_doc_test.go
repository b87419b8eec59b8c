package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

// A recipe is one ```sh block of docs/operators.md. Its first line is
// either "# not tested: <why>" or "# test: <name> [background] [tty] [tenant]",
// followed by any of:
//
//	# expect: <regexp>   the output (stdout and stderr, ANSI codes removed)
//	                     must match; multi-line mode, so ^ and $ are lines
//	# ready: <regexp>    background only: wait for this before going on
//	# exit: <code>       the expected exit status (default 0)
//
// and the shell script, run by bash with -e -o pipefail. A background
// recipe keeps running while the recipes after it run; its expectations
// are checked at the end of the document, then it is stopped. A tty
// recipe runs on a pseudo-terminal (nats stream view needs one). A tenant
// recipe runs only as a tenant (alice of deploy/nats, TestOperatorsAsTenant).
//
// "nats sub" prints "Subscribing on ..." right before it subscribes; the
// recipe after it is a new process that connects and sends a request
// before anything is published, so the subscription is in place by then.
type recipe struct {
	Name       string
	Line       int
	Background bool
	TTY        bool
	Tenant     bool
	Expect     []*regexp.Regexp
	Ready      *regexp.Regexp
	Exit       int
	Script     string
}

var (
	testMarker    = regexp.MustCompile(`^# test: ([a-z0-9-]+)((?: (?:background|tty|tenant))*)\s*$`)
	notTested     = regexp.MustCompile(`^# not tested: \S`)
	expectMarker  = "# expect: "
	readyMarker   = "# ready: "
	exitMarker    = "# exit: "
	ansiSequences = regexp.MustCompile(`\x1b(\[[0-9;?]*[ -/]*[@-~]|[78=>])`)
)

// parseRecipes reads the tested ```sh blocks of a markdown document. Every
// sh block must be marked one way or the other, so that nothing is left
// untested by accident.
func parseRecipes(path string) ([]recipe, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []recipe
	var cur *recipe
	var body []string
	var skip bool
	names := map[string]int{}
	scan := bufio.NewScanner(f)
	for n := 1; scan.Scan(); n++ {
		line := scan.Text()
		switch {
		case cur == nil && !skip && line == "```sh":
			cur = &recipe{Line: n + 1}
			body = nil
		case (cur != nil || skip) && line == "```":
			if cur != nil {
				cur.Script = strings.Join(body, "\n") + "\n"
				if strings.TrimSpace(strings.Join(body, "")) == "" {
					return nil, fmt.Errorf("%s:%d: recipe %s has no command", path, cur.Line, cur.Name)
				}
				if cur.Ready != nil && !cur.Background {
					return nil, fmt.Errorf("%s:%d: # ready: is only for background recipes", path, cur.Line)
				}
				out = append(out, *cur)
			}
			cur, skip = nil, false
		case cur != nil && cur.Name == "" && !skip:
			if notTested.MatchString(line) {
				cur, skip = nil, true
				continue
			}
			m := testMarker.FindStringSubmatch(line)
			if m == nil {
				return nil, fmt.Errorf("%s:%d: an sh block must start with \"# test: <name> [background] [tty] [tenant]\" or \"# not tested: <why>\", got %q", path, n, line)
			}
			if prev, dup := names[m[1]]; dup {
				return nil, fmt.Errorf("%s:%d: recipe name %s is also used at line %d", path, n, m[1], prev)
			}
			names[m[1]] = n
			cur.Name = m[1]
			cur.Background = strings.Contains(m[2], "background")
			cur.TTY = strings.Contains(m[2], "tty")
			cur.Tenant = strings.Contains(m[2], "tenant")
		case cur != nil && strings.HasPrefix(line, expectMarker):
			re, err := regexp.Compile("(?m)" + strings.TrimPrefix(line, expectMarker))
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", path, n, err)
			}
			cur.Expect = append(cur.Expect, re)
		case cur != nil && strings.HasPrefix(line, readyMarker):
			re, err := regexp.Compile("(?m)" + strings.TrimPrefix(line, readyMarker))
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", path, n, err)
			}
			cur.Ready = re
		case cur != nil && strings.HasPrefix(line, exitMarker):
			code, err := strconv.Atoi(strings.TrimPrefix(line, exitMarker))
			if err != nil {
				return nil, fmt.Errorf("%s:%d: exit code: %w", path, n, err)
			}
			cur.Exit = code
		case cur != nil:
			body = append(body, line)
		}
	}
	if err := scan.Err(); err != nil {
		return nil, err
	}
	if cur != nil || skip {
		return nil, fmt.Errorf("%s: unterminated sh block", path)
	}
	return out, nil
}

// output is a process's combined output, safe to read while it grows.
type output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

// String is the output so far with ANSI escape sequences and carriage
// returns removed.
func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return cleanOutput(o.buf.String())
}

// cleanOutput removes ANSI escape sequences and carriage returns.
func cleanOutput(s string) string {
	return strings.ReplaceAll(ansiSequences.ReplaceAllString(s, ""), "\r", "")
}

// script is a running recipe.
type script struct {
	recipe recipe
	cmd    *exec.Cmd
	out    *output
	done   chan struct{}
	err    error
	tty    *os.File
}

// startScript runs r's script with env in dir, on a pseudo-terminal when
// r.TTY. The process leads its own process group, so stop ends the
// commands it started too.
func startScript(r recipe, env []string, dir string) (*script, error) {
	cmd := exec.Command("bash", "-e", "-o", "pipefail", "-c", r.Script)
	cmd.Env, cmd.Dir = env, dir
	s := &script{recipe: r, cmd: cmd, out: &output{}, done: make(chan struct{})}
	if r.TTY {
		// pty.Start makes the process a session leader, which is also a
		// process group of its own.
		tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 50, Cols: 200})
		if err != nil {
			return nil, err
		}
		s.tty = tty
		copied := make(chan struct{})
		go func() {
			defer close(copied)
			s.answerTerminal()
		}()
		go func() {
			s.err = cmd.Wait()
			// The pty reader sees EIO once the last writer is gone.
			<-copied
			_ = tty.Close()
			close(s.done)
		}()
		return s, nil
	}
	cmd.Stdout, cmd.Stderr = s.out, s.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

// answerTerminal copies the pty's output and plays the terminal's part:
// it answers cursor position queries and declines "Next Page?" prompts of
// nats stream view, so a longer listing ends after its first page.
//
// An answer that arrives before the prompt has put the terminal in raw
// mode is read in cooked mode, where the Enter ("\r") becomes "\n", which
// the prompt does not take for Enter; so while a prompt is the last thing
// shown and nothing new came for promptRetry, the answer is sent again.
func (s *script) answerTerminal() {
	const promptRetry = 500 * time.Millisecond
	var (
		mu       sync.Mutex
		seen     bytes.Buffer
		prompts  int
		lastRead = time.Now()
	)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(promptRetry)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			mu.Lock()
			waiting := prompts > 0 && time.Since(lastRead) >= promptRetry &&
				strings.HasSuffix(strings.TrimSpace(cleanOutput(seen.String())), "Next Page? (Y/n)")
			mu.Unlock()
			if waiting {
				_, _ = s.tty.Write([]byte("n\r"))
			}
		}
	}()
	buf := make([]byte, 4096)
	for {
		n, err := s.tty.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			_, _ = s.out.Write(chunk)
			mu.Lock()
			seen.Write(chunk)
			lastRead = time.Now()
			for range bytes.Count(chunk, []byte("\x1b[6n")) {
				_, _ = s.tty.Write([]byte("\x1b[1;1R"))
			}
			if c := strings.Count(cleanOutput(seen.String()), "Next Page?"); c > prompts {
				prompts = c
				_, _ = s.tty.Write([]byte("n\r"))
			}
			mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// wait waits for the script to end, up to timeout; it reports whether it
// ended.
func (s *script) wait(timeout time.Duration) bool {
	select {
	case <-s.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// exitCode is the script's exit status (-1 when it was killed).
func (s *script) exitCode() int {
	var exit *exec.ExitError
	if errors.As(s.err, &exit) {
		return exit.ExitCode()
	}
	if s.err != nil {
		return -1
	}
	return 0
}

// stop ends the script's process group: SIGTERM, then SIGKILL after 5 s.
func (s *script) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	pgid := s.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	if !s.wait(5 * time.Second) {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-s.done
	}
}

// missing lists the expectations that the output does not match.
func (s *script) missing() []string {
	text := s.out.String()
	var out []string
	for _, re := range s.recipe.Expect {
		if !re.MatchString(text) {
			out = append(out, strings.TrimPrefix(re.String(), "(?m)"))
		}
	}
	return out
}

// runRecipes runs the recipes in order as subtests: foreground ones to
// their end (up to foregroundTimeout), background ones until their ready
// pattern shows; at the end every background recipe must have matched its
// expectations within backgroundTimeout.
func runRecipes(t *testing.T, recipes []recipe, env []string, foregroundTimeout, backgroundTimeout time.Duration) {
	dir := t.TempDir()
	var background []*script
	t.Cleanup(func() {
		for _, s := range background {
			s.stop()
		}
	})
	for _, r := range recipes {
		t.Run(r.Name, func(t *testing.T) {
			s, err := startScript(r, env, dir)
			if err != nil {
				t.Fatalf("start %s: %v", r.Name, err)
			}
			if r.Background {
				background = append(background, s)
				if r.Ready == nil {
					return
				}
				ok := pollUntil(backgroundTimeout, func() bool {
					select {
					case <-s.done:
						return true
					default:
						return r.Ready.MatchString(s.out.String())
					}
				})
				if !ok || !r.Ready.MatchString(s.out.String()) {
					t.Fatalf("docs/operators.md:%d: %s not ready (want %q) after %s; exited=%v\n%s",
						r.Line, r.Name, r.Ready, backgroundTimeout, isDone(s), s.out.String())
				}
				return
			}
			if !s.wait(foregroundTimeout) {
				s.stop()
				t.Fatalf("docs/operators.md:%d: %s still running after %s\n%s", r.Line, r.Name, foregroundTimeout, s.out.String())
			}
			if code := s.exitCode(); code != r.Exit {
				t.Errorf("docs/operators.md:%d: %s exited %d, want %d", r.Line, r.Name, code, r.Exit)
			}
			if miss := s.missing(); len(miss) > 0 {
				t.Errorf("docs/operators.md:%d: output of %s does not match %q\n--- output ---\n%s", r.Line, r.Name, miss, s.out.String())
			}
		})
	}
	for _, s := range background {
		t.Run(s.recipe.Name+"/expect", func(t *testing.T) {
			ok := pollUntil(backgroundTimeout, func() bool { return len(s.missing()) == 0 || isDone(s) })
			s.stop()
			if miss := s.missing(); !ok || len(miss) > 0 {
				t.Errorf("docs/operators.md:%d: background %s did not show %q within %s\n--- output ---\n%s",
					s.recipe.Line, s.recipe.Name, miss, backgroundTimeout, s.out.String())
			}
		})
	}
}

func isDone(s *script) bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// pollUntil polls cond every 50 ms until it is true (true) or timeout
// passes (false).
func pollUntil(timeout time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return cond()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return true
}

// output collects a process's stdout and stderr.
var _ io.Writer = (*output)(nil)
