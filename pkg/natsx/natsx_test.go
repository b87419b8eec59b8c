package natsx_test

import (
	"context"
	"io"
	"log/slog"
	"os"
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
