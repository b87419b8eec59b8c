package natsx_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestEnsureStreamsIsIdempotent(t *testing.T) {
	srv := testenv.StartNATS(t)
	ctx := context.Background()
	nc, err := natsx.Connect(ctx, config.NATS{URL: srv.URL()}, "test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := natsx.EnsureStreams(ctx, js); err != nil {
			t.Fatal(err)
		}
	}
	names := map[string]bool{}
	for name := range js.StreamNames(ctx).Name() {
		names[name] = true
	}
	for _, want := range []string{contract.StreamResults, contract.StreamCandles, contract.StreamIndicators, contract.StreamAlerts, "KV_" + contract.BucketState} {
		if !names[want] {
			t.Errorf("stream %s missing (have %v)", want, names)
		}
	}
	if len(names) != 5 {
		t.Errorf("running twice made extra streams: %v", names)
	}
	// A publish with the same Nats-Msg-Id inside the window is dropped.
	for range 2 {
		ack, err := js.Publish(ctx, contract.ResultSubject("alice", "c1"), []byte(`{}`), jetstream.WithMsgID("c1"))
		if err != nil {
			t.Fatal(err)
		}
		_ = ack
	}
	info, err := js.Stream(ctx, contract.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	if n := info.CachedInfo().State.Msgs; n != 1 {
		t.Fatalf("duplicate result stored: %d messages", n)
	}
	// An existing stream with a different config is updated, not rejected.
	if _, err := js.UpdateStream(ctx, jetstream.StreamConfig{Name: contract.StreamAlerts, Subjects: []string{contract.AlertSubjects}, MaxAge: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, contract.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	if s.CachedInfo().Config.MaxAge != 30*24*time.Hour {
		t.Fatalf("EnsureStreams did not restore the config: %v", s.CachedInfo().Config.MaxAge)
	}
}

func TestConnectFailsClearly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := natsx.Connect(ctx, config.NATS{URL: "nats://127.0.0.1:1"}, "test", quiet)
	if err == nil {
		t.Fatal("connected to nothing")
	}
}

func TestDrain(t *testing.T) {
	srv := testenv.StartNATS(t)
	nc, err := natsx.Connect(context.Background(), config.NATS{URL: srv.URL()}, "test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := natsx.Drain(context.Background(), nc); err != nil {
		t.Fatal(err)
	}
	if !nc.IsClosed() {
		t.Fatal("drained connection is not closed")
	}
	if err := natsx.Drain(context.Background(), nc); err != nil {
		t.Fatal("draining a closed connection must be a no-op")
	}
}

// TestAlertsStreamStoresAndRepublishesEachIDOnce migrates a VIGIL_ALERTS of
// the old configuration (stored on vigil.alert.>, holding an alert) to the
// ingest configuration, then publishes alerts on the ingest subject, one
// id twice: core subscribers of vigil.alert.> get each stored alert once,
// the stream keeps the old alert and stores the new ones as
// vigil.alert.<user>.<rule>, and a consumer filtered on vigil.alert.alice.>
// reads old and new.
func TestAlertsStreamStoresAndRepublishesEachIDOnce(t *testing.T) {
	srv := testenv.StartNATS(t)
	ctx := context.Background()
	nc, js := testenv.Connect(t, srv.URL())
	old := jetstream.StreamConfig{Name: contract.StreamAlerts, Subjects: []string{contract.AlertSubjects}, Storage: jetstream.FileStorage, Duplicates: time.Hour}
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, contract.AlertSubject("alice", "old"), []byte(`{"id":"alice.old.1"}`), jetstream.WithMsgID("alice.old.1")); err != nil {
		t.Fatal(err)
	}
	for range 2 { // a second run changes nothing
		if err := natsx.EnsureStreams(ctx, js); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := nc.SubscribeSync(contract.AlertSubjects)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a1", "a2", "a1", "a3"} {
		ack, err := js.Publish(ctx, contract.AlertIngestSubject("alice", "r1"), []byte(`{"id":"`+id+`"}`), jetstream.WithMsgID(id))
		if err != nil {
			t.Fatal(err)
		}
		if ack.Stream != contract.StreamAlerts {
			t.Fatalf("stored in %s", ack.Stream)
		}
	}
	var got []string
	for len(got) < 3 {
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("republished %v, then: %v", got, err)
		}
		if m.Subject != contract.AlertSubject("alice", "r1") {
			t.Errorf("republished on %s", m.Subject)
		}
		got = append(got, m.Header.Get(jetstream.MsgIDHeader))
	}
	if want := []string{"a1", "a2", "a3"}; !slices.Equal(got, want) {
		t.Fatalf("core subscribers got %v, want %v", got, want)
	}
	// Nothing more arrives: the duplicate was neither stored nor republished.
	if m, err := sub.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("extra message %s %q", m.Subject, m.Data)
	}
	cons, err := js.OrderedConsumer(ctx, contract.StreamAlerts, jetstream.OrderedConsumerConfig{FilterSubjects: []string{contract.AlertSubject("alice", ">")}})
	if err != nil {
		t.Fatal(err)
	}
	var stored []string
	for range 4 {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("stream read %v, then: %v", stored, err)
		}
		stored = append(stored, m.Subject()+" "+m.Headers().Get(jetstream.MsgIDHeader))
	}
	want := []string{"vigil.alert.alice.old alice.old.1", "vigil.alert.alice.r1 a1", "vigil.alert.alice.r1 a2", "vigil.alert.alice.r1 a3"}
	if !slices.Equal(stored, want) {
		t.Fatalf("stream holds %v, want %v", stored, want)
	}
}
