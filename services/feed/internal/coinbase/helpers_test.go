package coinbase_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"vigil.dev/pkg/testenv"
	"vigil.dev/services/feed/internal/coinbase"
	"vigil.dev/services/feed/internal/fakecoinbase"
)

// quietLogger drops log output so test output stays readable.
var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// recorder collects a Stream's events.
type recorder struct {
	mu     sync.Mutex
	events []coinbase.Event
}

func (r *recorder) HandleEvent(e coinbase.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// eventsOf returns the recorded events of type T, in order.
func eventsOf[T coinbase.Event](r *recorder) []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []T
	for _, e := range r.events {
		if t, ok := e.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

// streamHarness is a fake exchange plus a running Stream connected to it.
type streamHarness struct {
	fake   *fakecoinbase.Server
	stream *coinbase.Stream
	events *recorder
}

// startStream starts a fake (heartbeats every 50 ms) and a Stream with short
// test timeouts; adjust may change the config. Both stop at test cleanup.
func startStream(t *testing.T, fakeOpts []fakecoinbase.Option, adjust func(*coinbase.StreamConfig)) *streamHarness {
	t.Helper()
	fake := fakecoinbase.NewServer(append([]fakecoinbase.Option{fakecoinbase.WithHeartbeatInterval(50 * time.Millisecond)}, fakeOpts...)...)
	t.Cleanup(fake.Close)
	events := &recorder{}
	cfg := coinbase.StreamConfig{
		URL:               fake.WebSocketURL,
		Handler:           events,
		Logger:            quietLogger,
		SilenceTimeout:    2 * time.Second,
		ReconnectBase:     10 * time.Millisecond,
		ReconnectMax:      100 * time.Millisecond,
		DialTimeout:       2 * time.Second,
		MessagesPerSecond: 200,
	}
	if adjust != nil {
		adjust(&cfg)
	}
	stream, err := coinbase.NewStream(cfg)
	if err != nil {
		t.Fatalf("NewStream: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- stream.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil after cancel", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	h := &streamHarness{fake: fake, stream: stream, events: events}
	testenv.WaitFor(t, 5*time.Second, "the heartbeats subscription", func() bool { return fake.Subscribed("heartbeats", "heartbeats") == 1 })
	return h
}

// subscribe subscribes through the Stream and waits until the fake has it.
func (h *streamHarness) subscribe(t *testing.T, channel coinbase.Channel, product string) {
	t.Helper()
	if err := h.stream.Subscribe(channel, product); err != nil {
		t.Fatalf("Subscribe(%s, %s): %v", channel, product, err)
	}
	testenv.WaitFor(t, 5*time.Second, "upstream subscription to "+string(channel)+" "+product, func() bool {
		return h.fake.Subscribed(string(channel), product) == 1
	})
}

// newKeyPEM makes a P-256 key and returns it with its SEC 1 PEM.
func newKeyPEM(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

// newCredentials makes a fresh CDP key named name.
func newCredentials(t *testing.T, name string) (*coinbase.Credentials, *ecdsa.PrivateKey) {
	t.Helper()
	key, keyPEM := newKeyPEM(t)
	creds, err := coinbase.NewCredentials(name, keyPEM)
	if err != nil {
		t.Fatalf("NewCredentials: %v", err)
	}
	return creds, key
}
