package record_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/alerts/internal/record"
)

// tableIDs are the ids in alert_events, sorted, with their count.
func tableIDs(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	rows, err := pool.Query(ctx, `SELECT id FROM alert_events ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// TestProjectionCatchesUpAfterAPostgresOutage records alerts while
// Postgres is down, with two projectors sharing the durable consumer (one
// restarted meanwhile): recording never waits for Postgres, and once it
// is back alert_events holds every alert id once, with its payload.
func TestProjectionCatchesUpAfterAPostgresOutage(t *testing.T) {
	ctx := context.Background()
	_, js := testenv.Connect(t, testenv.StartNATS(t).URL())
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	pg := testenv.StartPostgresServer(t)
	pool, err := pgxpool.New(ctx, pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	opts := record.ProjectorOptions{Batch: 16, AckWait: 2 * time.Second, RetryBackoff: 20 * time.Millisecond, MaxRetryBackoff: 200 * time.Millisecond, Log: log}
	var wg sync.WaitGroup
	run := func() context.CancelFunc {
		runCtx, cancel := context.WithCancel(ctx)
		wg.Go(func() { _ = record.NewProjector(js, pool, opts).Run(runCtx) })
		return cancel
	}
	stopFirst := run()
	stopSecond := run()
	t.Cleanup(func() {
		stopSecond()
		wg.Wait()
	})
	rec := record.New(js)
	var want []string
	recordBars := func(from, to int64) {
		t.Helper()
		var batch []record.Alert
		for i := from; i < to; i++ {
			batch = append(batch, alert("alice", "price-100k", i), alert("bob", "rsi-hot", i))
		}
		recordCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := rec.Record(recordCtx, batch); err != nil {
			t.Fatal(err)
		}
		if _, err := rec.Record(recordCtx, batch[:len(batch)/2]); err != nil { // a repeat
			t.Fatal(err)
		}
		want = append(want, ids(batch...)...)
	}
	recordBars(0, 20)
	testenv.WaitFor(t, 30*time.Second, "the first alerts in alert_events", func() bool {
		got, err := tableIDs(ctx, pool)
		return err == nil && len(got) == 40
	})
	pg.Stop()
	recordBars(20, 100)
	stopFirst() // a projector stops during the outage, with a batch in hand
	stopFirst = run()
	defer stopFirst()
	recordBars(100, 120)
	pg.Start()
	back := time.Now()
	slices.Sort(want)
	var got []string
	testenv.WaitFor(t, time.Minute, fmt.Sprintf("%d alerts in alert_events", len(want)), func() bool {
		got, err = tableIDs(ctx, pool)
		return err == nil && len(got) >= len(want)
	})
	t.Logf("alert_events caught up %s after Postgres answered again", time.Since(back).Round(time.Millisecond))
	if !slices.Equal(got, want) {
		t.Fatalf("alert_events holds %d ids, want %d: %v", len(got), len(want), got)
	}
	var payload contract.Alert
	if err := pool.QueryRow(ctx, `SELECT payload FROM alert_events WHERE id = $1`, want[0]).Scan(&payload); err != nil {
		t.Fatal(err)
	}
	if payload.ID != want[0] || payload.Symbol != "BTC-USD" {
		t.Errorf("payload of %s: %+v", want[0], payload)
	}
	testenv.WaitFor(t, 30*time.Second, "the projector's consumer to have nothing pending", func() bool {
		cons, err := js.Consumer(ctx, contract.StreamAlerts, record.ProjectorConsumer)
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}
