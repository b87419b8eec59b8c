package ledger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/control/internal/ledger"
)

// TestProjectorCatchesUpAfterAnOutage runs commands through the ledger
// and publishes their audit records as the executor does, while a private
// PostgreSQL runs, then while it is stopped, then starts it again on the
// same port: command_log ends up with every command exactly once, with its
// final status, although records came twice and out of order.
func TestProjectorCatchesUpAfterAnOutage(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pg, err := localstack.StartPostgres(ctx, localstack.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Stop() })
	pool, err := db.NewPool(ctx, pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := db.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	js := newJS(t)
	l := open(t, js, ledger.Options{})
	p, err := ledger.StartProjector(ctx, js, pool, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)

	// run records, runs and finishes n commands of user with ids prefix<i>,
	// publishing the audit records like the executor (the running record
	// again after the final one, as a late duplicate).
	run := func(user, prefix string, n int) {
		t.Helper()
		for i := range n {
			id := fmt.Sprint(prefix, i)
			if _, _, err := l.Record(ctx, entry(id, user, contract.CmdClearCache), 32); err != nil {
				t.Fatal(err)
			}
			c, err := l.Claim(ctx, user, claimOpts("x1", nil))
			if err != nil || c.Next == nil || c.Next.ID != id {
				t.Fatalf("claim %s: %+v %v", id, c, err)
			}
			if err := ledger.PublishAudit(ctx, js, *c.Next); err != nil {
				t.Fatal(err)
			}
			res, _ := json.Marshal(map[string]any{"cleared": true, "n": i})
			ended, ok, err := l.Finish(ctx, user, id, "x1", ledger.Outcome{Status: contract.StatusSucceeded, Result: res})
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			for range 2 {
				if err := ledger.PublishAudit(ctx, js, ended); err != nil {
					t.Fatal(err)
				}
			}
			late := *c.Next
			late.Attempts++ // a record the dedupe does not drop
			if err := ledger.PublishAudit(ctx, js, late); err != nil {
				t.Fatal(err)
			}
			opts := claimOpts("x1", nil)
			opts.Settled = settled(id)
			if _, err := l.Claim(ctx, user, opts); err != nil {
				t.Fatal(err)
			}
		}
	}
	count := func() (rows, final int) {
		err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE status = 'succeeded' AND finished_at IS NOT NULL
			AND result IS NOT NULL AND published_at IS NOT NULL) FROM command_log`).Scan(&rows, &final)
		if err != nil {
			return -1, -1
		}
		return rows, final
	}
	run("alice", "up-", 5)
	run("bob", "up-", 5) // the same ids for another user are other commands
	testenv.WaitFor(t, time.Minute, "the rows written while PostgreSQL is up", func() bool { r, f := count(); return r == 10 && f == 10 })

	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	run("alice", "down-", 10)
	port := pg.Port()
	began := time.Now()
	pg, err = localstack.StartPostgres(ctx, localstack.Options{Dir: dir, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, time.Minute, "the rows of the outage", func() bool { r, f := count(); return r == 20 && f == 20 })
	t.Logf("command_log complete %s after PostgreSQL started again", time.Since(began).Round(time.Millisecond))
	var dups int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT user_token, id FROM command_log GROUP BY 1, 2 HAVING count(*) > 1) d`).Scan(&dups); err != nil || dups != 0 {
		t.Fatalf("duplicated rows: %d (%v)", dups, err)
	}
	var seqs string
	if err := pool.QueryRow(ctx, `SELECT string_agg(seq::text, ',' ORDER BY seq) FROM command_log WHERE user_token = 'alice'`).Scan(&seqs); err != nil {
		t.Fatal(err)
	}
	if seqs != "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15" {
		t.Fatalf("alice's seqs %s", seqs)
	}
}

// TestProjectorComesBackWhenItsConsumerIsDeleted deletes the projector's
// durable consumer under it: the projector says so, creates it again, is
// ready again, and records published after the loss reach command_log.
func TestProjectorComesBackWhenItsConsumerIsDeleted(t *testing.T) {
	ctx := context.Background()
	pool := testenv.PostgresPool(t)
	js := newJS(t)
	l := open(t, js, ledger.Options{})
	logs := &testenv.Buffer{}
	p, err := ledger.StartProjector(ctx, js, pool, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	publish := func(id string) {
		t.Helper()
		if _, _, err := l.Record(ctx, entry(id, "alice", contract.CmdClearCache), 32); err != nil {
			t.Fatal(err)
		}
		c, err := l.Claim(ctx, "alice", claimOpts("x1", nil))
		if err != nil || c.Next == nil || c.Next.ID != id {
			t.Fatalf("claim %s: %+v %v", id, c, err)
		}
		if err := ledger.PublishAudit(ctx, js, *c.Next); err != nil {
			t.Fatal(err)
		}
		ended, ok, err := l.Finish(ctx, "alice", id, "x1", ledger.Outcome{Status: contract.StatusSucceeded, Result: []byte(`{}`)})
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		if err := ledger.PublishAudit(ctx, js, ended); err != nil {
			t.Fatal(err)
		}
	}
	rows := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM command_log WHERE status = 'succeeded'`).Scan(&n); err != nil {
			return -1
		}
		return n
	}
	publish("before")
	testenv.WaitFor(t, time.Minute, "the first row", func() bool { return rows() == 1 })

	if err := js.DeleteConsumer(ctx, natsx.StreamCommands, ledger.ProjectorDurable); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, time.Minute, "the consumer created again", func() bool {
		_, err := js.Consumer(ctx, natsx.StreamCommands, ledger.ProjectorDurable)
		return err == nil && p.Ready(ctx) == nil
	})
	if !strings.Contains(logs.String(), "consumer was lost") {
		t.Errorf("the loss was not logged: %s", logs.String())
	}
	publish("after")
	testenv.WaitFor(t, time.Minute, "the row of a record published after the loss", func() bool { return rows() == 2 })
}
