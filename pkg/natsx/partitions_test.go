package natsx_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

// TestPartitionOfMatchesTheServer publishes on the contract's subjects and
// checks that the server stored each under the partition natsx.Of
// computes, that a core subscriber still sees the published subject, and
// that Published undoes the stored spelling.
func TestPartitionOfMatchesTheServer(t *testing.T) {
	srv := testenv.StartNATS(t)
	nc, js := testenv.Connect(t, srv.URL())
	ctx := context.Background()
	const n = 7
	if err := natsx.EnsurePartitionedStreams(ctx, js, n); err != nil {
		t.Fatal(err)
	}
	core, err := nc.SubscribeSync("vigil.candle.demo.>")
	if err != nil {
		t.Fatal(err)
	}
	var published []string
	for i := range 40 {
		user := []string{"demo", "bob", "carol"}[i%3]
		s := contract.SeriesID{User: user, ExchangeID: int64(i%5 + 1), Symbol: fmt.Sprintf("S%d-USD", i), Timeframe: contract.TF1m}
		for _, subject := range []string{contract.CandleSubject(s), contract.IndicatorSubject(s)} {
			if _, err := js.Publish(ctx, subject, []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
			published = append(published, subject)
		}
	}
	for _, p := range natsx.PartitionedStreams {
		stream, err := js.Stream(ctx, p.Stream)
		if err != nil {
			t.Fatal(err)
		}
		for seq := uint64(1); seq <= 40; seq++ {
			m, err := stream.GetMsg(ctx, seq)
			if err != nil {
				t.Fatal(err)
			}
			subject, k := natsx.Published(m.Subject)
			tokens := strings.Split(subject, ".")
			keys := make([]string, len(p.Keys))
			for i, w := range p.Keys {
				keys[i] = tokens[1+w]
			}
			if want := natsx.Of(n, keys...); k != want {
				t.Fatalf("%s: stored as %s (partition %d), natsx.Of says %d", subject, m.Subject, k, want)
			}
			if !strings.HasPrefix(m.Subject, p.Prefix+".p.") {
				t.Fatalf("stored subject %s lacks the partition token", m.Subject)
			}
		}
	}
	for range 14 { // demo's candles: every third of 40
		m, err := core.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(m.Subject, "vigil.candle.demo.") {
			t.Fatalf("core subscriber got %s", m.Subject)
		}
	}
	if len(published) != 80 {
		t.Fatal(len(published))
	}
}

// TestPartitionCountChanges: a stream from before partitioning is
// migrated; a partitioned stream with another count is refused with a line
// naming the count it has, and left as it is.
func TestPartitionCountChanges(t *testing.T) {
	srv := testenv.StartNATS(t)
	_, js := testenv.Connect(t, srv.URL())
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: contract.StreamCandles, Subjects: []string{contract.CandleSubjects}}); err != nil {
		t.Fatal(err)
	}
	if err := natsx.EnsurePartitionedStreams(ctx, js, 16); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, contract.StreamCandles)
	if err != nil {
		t.Fatal(err)
	}
	if tr := s.CachedInfo().Config.SubjectTransform; tr == nil || !strings.Contains(tr.Destination, "partition(16,") {
		t.Fatalf("old stream not migrated: %+v", tr)
	}
	err = natsx.EnsurePartitionedStreams(ctx, js, 32)
	if !errors.Is(err, natsx.ErrPartitions) || !strings.Contains(err.Error(), "partitioned into 16") {
		t.Fatalf("another count: %v", err)
	}
	s, _ = js.Stream(ctx, contract.StreamCandles)
	if !strings.Contains(s.CachedInfo().Config.SubjectTransform.Destination, "partition(16,") {
		t.Fatal("a refused count changed the stream")
	}
	for _, bad := range []int{0, -1, 1025} {
		if err := natsx.EnsurePartitionedStreams(ctx, js, bad); !errors.Is(err, natsx.ErrPartitions) {
			t.Errorf("%d partitions: %v", bad, err)
		}
	}
}

func TestStoredFilter(t *testing.T) {
	if got := natsx.CandlePartitions.StoredFilter("vigil.candle.bob.>"); got != "vigil.candle.p.*.bob.>" {
		t.Fatal(got)
	}
	if got, k := natsx.Published("vigil.indicator.p.12.bob.1.BTC-USD.1m"); got != "vigil.indicator.bob.1.BTC-USD.1m" || k != 12 {
		t.Fatal(got, k)
	}
	if got, k := natsx.Published("vigil.candle.bob.1.BTC-USD.1m"); got != "vigil.candle.bob.1.BTC-USD.1m" || k != -1 {
		t.Fatal(got, k)
	}
}

// TestAllIsTheStreamsSubjects: a consumer owning every partition filters
// on All, which is the server's fast path only while it is exactly the
// stream's one subject.
func TestAllIsTheStreamsSubjects(t *testing.T) {
	for _, p := range natsx.PartitionedStreams {
		for _, cfg := range natsx.StreamConfigs(16) {
			if cfg.Name == p.Stream && (len(cfg.Subjects) != 1 || cfg.Subjects[0] != p.All()) {
				t.Errorf("%s: subjects %q, All %q", p.Stream, cfg.Subjects, p.All())
			}
		}
	}
}
