package partition_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/partition"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const partitions = 16

// member is one instance: its group, its consumer and what it handled.
type member struct {
	name     string
	group    *membership.Group
	consumer *partition.Consumer

	mu sync.Mutex
	// handled counts the messages handled per partition; owned is the
	// set of partitions after each change.
	handled map[int]int
	ids     []string
	// filtered is how many partitions the consumer had after its last
	// Changed, which comes once the server's filter has them: a member
	// owns a partition (Partitions) from its claim on, but a message
	// published before the filter took it is skipped by this consumer
	// (the service's rebuild from Redis after Changed covers it).
	filtered int
}

// ledger records which member held which partition, to catch two holders.
type ledger struct {
	mu      sync.Mutex
	holders map[int]string
	overlap []string
}

func (l *ledger) set(name string, owned []int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, h := range l.holders {
		if h == name && !slices.Contains(owned, k) {
			delete(l.holders, k)
		}
	}
	for _, k := range owned {
		if h, ok := l.holders[k]; ok && h != name {
			l.overlap = append(l.overlap, fmt.Sprintf("partition %d: %s took it while %s held it", k, name, h))
		}
		l.holders[k] = name
	}
}

func start(t *testing.T, js jetstream.JetStream, nc *nats.Conn, name string, led *ledger) *member {
	t.Helper()
	ctx := context.Background()
	g, err := membership.Join(ctx, js, "vigil-test", name, membership.Options{Interval: 300 * time.Millisecond, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	m := &member{name: name, group: g, handled: map[int]int{}}
	m.consumer, err = partition.New(ctx, partition.Options{
		JS: js, NC: nc, Stream: natsx.CandlePartitions, Count: partitions, Service: "vigil-test", Members: g,
		Consumer: jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, InactiveThreshold: time.Minute},
		Handle: func(msgs []jetstream.Msg) {
			m.mu.Lock()
			defer m.mu.Unlock()
			for _, msg := range msgs {
				_, k := natsx.Published(msg.Subject())
				if !m.consumer.Owns(k) {
					t.Errorf("%s handled partition %d it does not own", name, k)
				}
				m.handled[k]++
				m.ids = append(m.ids, string(msg.Data()))
				_ = msg.Ack()
			}
		},
		Changed: func(context.Context) {
			parts := m.consumer.Partitions()
			led.set(name, parts)
			m.mu.Lock()
			m.filtered = len(parts)
			m.mu.Unlock()
		},
		Log: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.consumer.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return m
}

// filteredCount is how many partitions the member's consumer filters on.
func (m *member) filteredCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.filtered
}

func (m *member) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.ids)
}

func publish(t *testing.T, js jetstream.JetStream, from, to int) {
	t.Helper()
	ctx := context.Background()
	for i := from; i < to; i++ {
		s := contract.SeriesID{User: "u" + strconv.Itoa(i%7), ExchangeID: 1, Symbol: "S" + strconv.Itoa(i%97) + "-USD", Timeframe: contract.TF1m}
		if _, err := js.PublishAsync(contract.CandleSubject(s), []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
	}
}

// TestPartitionsSplitAndHandOver: one member owns every partition; two
// more join and each ends up with a third, no partition ever held by two
// members at once; every message is handled exactly once, by the owner of
// its partition; a member that stops hands its partitions over.
func TestPartitionsSplitAndHandOver(t *testing.T) {
	srv := testenv.StartNATS(t)
	nc, js := testenv.Connect(t, srv.URL())
	if err := natsx.EnsurePartitionedStreams(context.Background(), js, partitions); err != nil {
		t.Fatal(err)
	}
	led := &ledger{holders: map[int]string{}}
	a := start(t, js, nc, "a", led)
	testenv.WaitFor(t, 2*time.Minute, "a to own and filter on every partition", func() bool { return a.filteredCount() == partitions })
	// Owning them all, a filters on the stream's subjects, not on 16
	// partition subjects (the server's fast path).
	info, err := a.consumer.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if f := append([]string{info.Config.FilterSubject}, info.Config.FilterSubjects...); !slices.Contains(f, natsx.CandlePartitions.All()) || len(slices.DeleteFunc(f, func(s string) bool { return s == "" })) != 1 {
		t.Errorf("filter of the consumer owning every partition: %q, want only %q", f, natsx.CandlePartitions.All())
	}
	publish(t, js, 0, 500)
	testenv.WaitFor(t, 2*time.Minute, "a to handle 500 messages", func() bool { return a.count() == 500 })

	b := start(t, js, nc, "b", led)
	c := start(t, js, nc, "c", led)
	all := []*member{a, b, c}
	split := func() bool {
		var union []int
		for _, m := range all {
			p := m.consumer.Partitions()
			if len(p) < partitions/3 || len(p) > partitions/3+1 || m.filteredCount() != len(p) {
				return false
			}
			union = append(union, p...)
		}
		slices.Sort(union)
		return len(slices.Compact(union)) == partitions && len(union) == partitions
	}
	testenv.WaitFor(t, 2*time.Minute, "the partitions to split three ways", func() bool {
		ok := split()
		if !ok {
			t.Logf("a %v b %v c %v members %v", a.consumer.Partitions(), b.consumer.Partitions(), c.consumer.Partitions(), a.group.Members())
		}
		return ok
	})
	publish(t, js, 500, 2000)
	total := func() int { return a.count() + b.count() + c.count() }
	testenv.WaitFor(t, 2*time.Minute, "2000 messages handled", func() bool { return total() >= 2000 })

	// c stops: its partitions move to a and b.
	if err := c.consumer.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	led.set("c", nil)
	if err := c.group.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	all = all[:2]
	testenv.WaitFor(t, 2*time.Minute, "a and b to own and filter on every partition", func() bool {
		return a.filteredCount()+b.filteredCount() == partitions
	})
	publish(t, js, 2000, 2600)
	testenv.WaitFor(t, 2*time.Minute, "2600 messages handled", func() bool { return total() >= 2600 })

	seen := map[string]string{}
	for _, m := range []*member{a, b, c} {
		m.mu.Lock()
		for _, id := range m.ids {
			if other, dup := seen[id]; dup {
				t.Errorf("message %s handled by %s and %s", id, other, m.name)
			}
			seen[id] = m.name
		}
		m.mu.Unlock()
	}
	if len(seen) != 2600 {
		t.Errorf("%d distinct messages handled, want 2600", len(seen))
	}
	led.mu.Lock()
	if len(led.overlap) > 0 {
		t.Errorf("partitions held twice:\n%s", strings.Join(led.overlap, "\n"))
	}
	led.mu.Unlock()
	for _, m := range all {
		_ = m.consumer.Stop(context.Background())
		_ = m.group.Leave(context.Background())
	}
}

func TestAssignIsBalancedAndStable(t *testing.T) {
	members := []string{"x1", "x2", "x3"}
	owners := partition.Assign(members, 64)
	counts := map[string]int{}
	for _, o := range owners {
		counts[o]++
	}
	for _, m := range members {
		if counts[m] < 21 || counts[m] > 22 {
			t.Errorf("%s owns %d of 64", m, counts[m])
		}
	}
	if !slices.Equal(owners, partition.Assign(members, 64)) {
		t.Fatal("assignment is not deterministic")
	}
	moved := 0
	for k, o := range partition.Assign(append(members, "x4"), 64) {
		if o != owners[k] {
			moved++
		}
	}
	if moved > 32 {
		t.Errorf("adding a fourth member moved %d of 64 partitions", moved)
	}
}

// TestReadyFollowsTheConsumer: Ready (the services' "consumer" readiness
// check) is nil while the consumer consumes, an error while the server
// has lost it (its stream deleted, so recreating it fails), and nil again
// once the stream is back and the consumer recreated, which then handles
// new messages and reports no lag.
func TestReadyFollowsTheConsumer(t *testing.T) {
	srv := testenv.StartNATS(t)
	nc, js := testenv.Connect(t, srv.URL())
	ctx := context.Background()
	if err := natsx.EnsurePartitionedStreams(ctx, js, partitions); err != nil {
		t.Fatal(err)
	}
	m := start(t, js, nc, "a", &ledger{holders: map[int]string{}})
	t.Cleanup(func() { _ = m.consumer.Stop(ctx) })
	ready := func() bool { return m.consumer.Ready(ctx) == nil }
	testenv.WaitFor(t, time.Minute, "the consumer ready", ready)

	if err := js.DeleteStream(ctx, natsx.CandlePartitions.Stream); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, time.Minute, "the consumer not ready once its stream is gone", func() bool { return !ready() })
	err := m.consumer.Ready(ctx)
	if !strings.Contains(err.Error(), m.consumer.Name()) {
		t.Fatalf("Ready while lost: %v, want the consumer named", err)
	}
	t.Logf("Ready while lost: %v", err)

	if err := natsx.EnsurePartitionedStreams(ctx, js, partitions); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, time.Minute, "the consumer ready again once recreated", ready)
	before := m.count()
	publish(t, js, 0, 50)
	testenv.WaitFor(t, time.Minute, "the recreated consumer to handle 50 messages", func() bool { return m.count() == before+50 })
	testenv.WaitFor(t, time.Minute, "no lag", func() bool { return ready() && m.consumer.Pending() == 0 })
}

// TestLeaseBucketDeletedWhileRunning (issue 13, 4c) deletes the lease
// bucket under two members that split the partitions: it comes back with
// every partition's lease naming its owner, and ownership still moves:
// when one member stops, the other takes every partition, and every
// message is handled once, by the owner of its partition.
func TestLeaseBucketDeletedWhileRunning(t *testing.T) {
	srv := testenv.StartNATS(t)
	nc, js := testenv.Connect(t, srv.URL())
	ctx := context.Background()
	if err := natsx.EnsurePartitionedStreams(ctx, js, partitions); err != nil {
		t.Fatal(err)
	}
	led := &ledger{holders: map[int]string{}}
	a := start(t, js, nc, "a", led)
	b := start(t, js, nc, "b", led)
	testenv.WaitFor(t, 2*time.Minute, "a and b to split the partitions", func() bool {
		return a.filteredCount() == partitions/2 && b.filteredCount() == partitions/2 &&
			len(a.consumer.Partitions()) == partitions/2 && len(b.consumer.Partitions()) == partitions/2
	})
	leasesNameTheOwners := func() bool {
		kv, err := js.KeyValue(ctx, partition.LeaseBucket)
		if err != nil {
			return false
		}
		for _, m := range []*member{a, b} {
			for _, k := range m.consumer.Partitions() {
				e, err := kv.Get(ctx, "vigil-test."+strconv.Itoa(k))
				if err != nil || string(e.Value()) != m.name {
					return false
				}
			}
		}
		return true
	}
	testenv.WaitFor(t, time.Minute, "the leases to name their owners", leasesNameTheOwners)

	if err := js.DeleteKeyValue(ctx, partition.LeaseBucket); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	testenv.WaitFor(t, time.Minute, "the bucket back with every lease naming its owner", func() bool {
		return len(a.consumer.Partitions())+len(b.consumer.Partitions()) == partitions && leasesNameTheOwners()
	})
	t.Logf("leases back %s after the bucket was deleted", time.Since(deleted).Round(time.Millisecond))
	publish(t, js, 0, 300)
	testenv.WaitFor(t, time.Minute, "300 messages handled", func() bool { return a.count()+b.count() >= 300 })

	if err := b.consumer.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	led.set("b", nil)
	if err := b.group.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, time.Minute, "a to own and filter on every partition", func() bool { return a.filteredCount() == partitions })
	publish(t, js, 300, 600)
	testenv.WaitFor(t, time.Minute, "600 messages handled", func() bool { return a.count()+b.count() >= 600 })
	seen := map[string]bool{}
	for _, m := range []*member{a, b} {
		m.mu.Lock()
		for _, id := range m.ids {
			if seen[id] {
				t.Errorf("message %s handled twice", id)
			}
			seen[id] = true
		}
		m.mu.Unlock()
	}
	if len(seen) != 600 {
		t.Errorf("%d distinct messages handled, want 600", len(seen))
	}
	led.mu.Lock()
	if len(led.overlap) > 0 {
		t.Errorf("partitions held twice:\n%s", strings.Join(led.overlap, "\n"))
	}
	led.mu.Unlock()
	_ = a.consumer.Stop(ctx)
	_ = a.group.Leave(ctx)
}
