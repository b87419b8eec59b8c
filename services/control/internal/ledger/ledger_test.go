package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/ledger"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// entry is a command of user to record.
func entry(id, user string, cmd contract.Command) ledger.Entry {
	return ledger.Entry{ID: id, User: user, UserID: 7, Command: cmd, Payload: []byte(`{}`), Priority: cmd.Priority()}
}

func newLedger(t *testing.T) (*ledger.Ledger, *pgxpool.Pool) {
	t.Helper()
	pool := testenv.PostgresPool(t)
	return ledger.New(pool), pool
}

// TestRecord records commands one after the other: positions count the
// commands that run first, a known id returns its first ACK or a conflict,
// and a full queue is busy.
func TestRecord(t *testing.T) {
	ctx := context.Background()
	l, pool := newLedger(t)
	const limit = 3
	first, dup, err := l.Record(ctx, entry("c1", "alice", contract.CmdClearCache), limit)
	if err != nil || dup {
		t.Fatalf("first record: dup %v err %v", dup, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE command_log SET accepted_at = now() - interval '11 minutes' WHERE id = 'c1'`); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		e        ledger.Entry
		wantErr  error
		wantDup  bool
		position int
	}{
		{"queued behind a clear-cache", entry("c2", "alice", contract.CmdClearCache), nil, false, 1},
		{"pause before both", entry("c3", "alice", contract.CmdPause), nil, false, 0},
		{"same id again", entry("c3", "alice", contract.CmdPause), nil, true, 0},
		{"same id, other user", entry("c3", "bob", contract.CmdPause), ledger.ErrIDConflict, false, 0},
		{"same id, other command", entry("c3", "alice", contract.CmdResume), ledger.ErrIDConflict, false, 0},
		{"id older than the window", entry("c1", "alice", contract.CmdClearCache), ledger.ErrIDConflict, false, 0},
		{"queue full", entry("c4", "alice", contract.CmdResume), ledger.ErrBusy, false, 0},
		{"other user's queue", entry("c5", "bob", contract.CmdResume), nil, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ack, dup, err := l.Record(ctx, tc.e, limit)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			want := contract.Ack{ID: tc.e.ID, User: tc.e.User, Command: tc.e.Command, Accepted: true, Position: tc.position}
			if ack != want || dup != tc.wantDup {
				t.Errorf("ack %+v dup %v, want %+v dup %v", ack, dup, want, tc.wantDup)
			}
		})
	}
	if first.Position != 0 || !first.Accepted {
		t.Errorf("first ack %+v", first)
	}
}

// TestRecordConcurrent records a user's commands from two pools at once,
// as two control instances do: exactly the queue limit is accepted, the
// rest is busy, and a duplicated id is recorded once with one ACK.
func TestRecordConcurrent(t *testing.T) {
	ctx := context.Background()
	url := testenv.Postgres(t)
	var ledgers []*ledger.Ledger
	for range 2 {
		pool, err := db.NewPool(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		ledgers = append(ledgers, ledger.New(pool))
	}
	const limit, sends = 5, 24
	type answer struct {
		ack contract.Ack
		dup bool
		err error
	}
	answers := make([]answer, sends)
	var wg sync.WaitGroup
	for i := range sends {
		wg.Go(func() {
			id := fmt.Sprintf("k%d", i/2) // every id is sent twice, once per instance
			a := &answers[i]
			a.ack, a.dup, a.err = ledgers[i%2].Record(ctx, entry(id, "alice", contract.CmdReloadSettings), limit)
		})
	}
	wg.Wait()
	accepted := map[string]contract.Ack{}
	for i, a := range answers {
		switch {
		case errors.Is(a.err, ledger.ErrBusy):
		case a.err != nil:
			t.Errorf("send %d: %v", i, a.err)
		case a.dup:
			if first, ok := accepted[a.ack.ID]; ok && first != a.ack {
				t.Errorf("duplicate of %s answered %+v, first %+v", a.ack.ID, a.ack, first)
			}
		default:
			if _, ok := accepted[a.ack.ID]; ok {
				t.Errorf("%s accepted twice", a.ack.ID)
			}
			accepted[a.ack.ID] = a.ack
		}
	}
	if len(accepted) != limit {
		t.Errorf("%d commands accepted, want the limit %d", len(accepted), limit)
	}
	positions := map[int]bool{}
	for _, a := range accepted {
		positions[a.Position] = true
	}
	for p := range limit {
		if !positions[p] {
			t.Errorf("no command got position %d: %v", p, positions)
		}
	}
}

// TestClaim claims from a user's queue with live and dead executors.
func TestClaim(t *testing.T) {
	ctx := context.Background()
	orphanError := func(e ledger.Entry) contract.Error {
		return contract.Error{Code: contract.CodeUnavailable, Message: "executor " + e.Instance + " died"}
	}
	opts := func(self string, running, members []string) ledger.ClaimOptions {
		return ledger.ClaimOptions{Self: self, SelfRunning: running, Members: members, MaxJobs: 1, MaxAttempts: 2, OrphanError: orphanError}
	}
	for _, tc := range []struct {
		name string
		// queue is recorded in order, the first claimA each claimed by
		// instance "a" right after it is recorded.
		queue   []ledger.Entry
		claimA  int
		opts    ledger.ClaimOptions
		want    string
		orphans []string
	}{
		{"empty queue", nil, 0, opts("b", nil, []string{"a", "b"}), "", nil},
		{"highest priority first", []ledger.Entry{entry("q1", "u", contract.CmdClearCache), entry("q2", "u", contract.CmdPause)}, 0,
			opts("b", nil, []string{"b"}), "q2", nil},
		{"a live executor runs the queue", []ledger.Entry{entry("q1", "u", contract.CmdPause), entry("q2", "u", contract.CmdResume)}, 1,
			opts("b", nil, []string{"a", "b"}), "", nil},
		{"a job does not hold the queue", []ledger.Entry{entry("j1", "u", contract.CmdForceBackfill), entry("q1", "u", contract.CmdResume)}, 1,
			opts("b", nil, []string{"a", "b"}), "q1", nil},
		{"jobs bounded", []ledger.Entry{entry("j1", "u", contract.CmdForceBackfill), entry("j2", "u", contract.CmdForceBackfill)}, 1,
			opts("b", nil, []string{"a", "b"}), "", nil},
		{"dead executor's command failed", []ledger.Entry{entry("q1", "u", contract.CmdPause), entry("q2", "u", contract.CmdResume)}, 1,
			opts("b", nil, []string{"b"}), "q2", []string{"q1"}},
		{"own command still running", []ledger.Entry{entry("q1", "u", contract.CmdPause), entry("q2", "u", contract.CmdResume)}, 1,
			opts("a", []string{"q1"}, []string{"a"}), "", nil},
		{"own command no longer running", []ledger.Entry{entry("q1", "u", contract.CmdPause), entry("q2", "u", contract.CmdResume)}, 1,
			opts("a", nil, []string{"a"}), "q2", []string{"q1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, _ := newLedger(t)
			for i, e := range tc.queue {
				if _, _, err := l.Record(ctx, e, 10); err != nil {
					t.Fatal(err)
				}
				if i >= tc.claimA {
					continue
				}
				if c, err := l.Claim(ctx, "u", opts("a", nil, []string{"a"})); err != nil || c.Next == nil || c.Next.ID != e.ID {
					t.Fatalf("claim of %s by a: %+v %v", e.ID, c, err)
				}
			}
			c, err := l.Claim(ctx, "u", tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if c.Next != nil {
				got = c.Next.ID
				if c.Next.Status != ledger.StatusRunning || c.Next.Instance != tc.opts.Self || c.Next.Attempts != 1 || c.Next.User != "u" {
					t.Errorf("claimed %+v", *c.Next)
				}
			}
			if got != tc.want {
				t.Errorf("claimed %q, want %q", got, tc.want)
			}
			var orphans []string
			for _, r := range c.Orphans {
				orphans = append(orphans, r.ID)
				if r.Status != contract.StatusFailed || r.Error == nil || r.Error.Message != "executor a died" {
					t.Errorf("orphan result %+v", r)
				}
			}
			if fmt.Sprint(orphans) != fmt.Sprint(tc.orphans) {
				t.Errorf("orphans %v, want %v", orphans, tc.orphans)
			}
		})
	}
}

// TestClaimConcurrent claims one user's queue from two instances at once:
// every command is claimed once, in order, and none while another runs.
func TestClaimConcurrent(t *testing.T) {
	ctx := context.Background()
	l, pool := newLedger(t)
	const n = 12
	for i := range n {
		if _, _, err := l.Record(ctx, entry(fmt.Sprintf("q%02d", i), "u", contract.CmdResume), n); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	deadline := time.Now().Add(20 * time.Second)
	for _, self := range []string{"a", "b"} {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				c, err := l.Claim(ctx, "u", ledger.ClaimOptions{Self: self, Members: []string{"a", "b"}, MaxJobs: 1, MaxAttempts: 1,
					OrphanError: func(ledger.Entry) contract.Error { return contract.Error{} }})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if len(order) == n {
					mu.Unlock()
					return
				}
				if c.Next == nil {
					mu.Unlock()
					continue
				}
				order = append(order, c.Next.ID)
				mu.Unlock()
				var runningNow int
				if err := pool.QueryRow(ctx, `SELECT count(*) FROM command_log WHERE status = 'running'`).Scan(&runningNow); err != nil || runningNow != 1 {
					t.Errorf("%s claimed %s: %d commands running (%v), want only it", self, c.Next.ID, runningNow, err)
				}
				if _, ok, err := l.Finish(ctx, c.Next.ID, self, ledger.Outcome{Status: contract.StatusSucceeded}); err != nil || !ok {
					t.Errorf("finish %s: %v %v", c.Next.ID, ok, err)
				}
			}
		})
	}
	wg.Wait()
	if len(order) != n {
		t.Fatalf("claimed %d of %d: %v", len(order), n, order)
	}
	for i, id := range order {
		if want := fmt.Sprintf("q%02d", i); id != want {
			t.Errorf("claim %d was %s, want %s (FIFO)", i, id, want)
		}
	}
}

// BenchmarkRecord records one command per iteration, each of its own user
// so no queue fills: the latency an ACK waits for.
func BenchmarkRecord(b *testing.B) {
	ctx := context.Background()
	l := ledger.New(testenv.PostgresPool(b))
	i := 0
	for b.Loop() {
		i++
		if _, _, err := l.Record(ctx, entry(fmt.Sprintf("r%d", i), fmt.Sprintf("u%d", i%64), contract.CmdPause), 1<<20); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClaimFinish claims a recorded command and finishes it: the
// executor's Postgres work per command.
func BenchmarkClaimFinish(b *testing.B) {
	ctx := context.Background()
	l := ledger.New(testenv.PostgresPool(b))
	opts := ledger.ClaimOptions{Self: "a", Members: []string{"a"}, MaxJobs: 1, MaxAttempts: 1,
		OrphanError: func(ledger.Entry) contract.Error { return contract.Error{} }}
	i := 0
	for b.Loop() {
		i++
		b.StopTimer()
		if _, _, err := l.Record(ctx, entry(fmt.Sprintf("c%d", i), "u", contract.CmdPause), 1<<20); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		c, err := l.Claim(ctx, "u", opts)
		if err != nil || c.Next == nil {
			b.Fatalf("claim: %+v %v", c, err)
		}
		if _, ok, err := l.Finish(ctx, c.Next.ID, "a", ledger.Outcome{Status: contract.StatusSucceeded}); err != nil || !ok {
			b.Fatalf("finish: %v %v", ok, err)
		}
	}
}
