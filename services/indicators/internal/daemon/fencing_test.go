package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/indicators/internal/daemon"
)

// TestFormerOwnerCutOffIsFenced: the only instance owns a series and has
// written its values up to bar b-1. Its network then fails: the indicator
// write of a correction of bar b it received (a newer version, other
// prices) is held on the way to Redis, and its NATS connection goes
// silent. A second instance starts, counts the first one dead, takes
// every partition (a new fencing epoch) and rebuilds the series from
// Redis, writing bar b as the feed stored it. Then the held write reaches
// Redis: the fence refuses it (without fencing its newer version would
// replace the new owner's bar b), the former owner logs it and gives the
// partition up, and every stored value is still the new owner's, equal to
// go-talib over the stored candles.
func TestFormerOwnerCutOffIsFenced(t *testing.T) {
	h := newHarness(t)
	natsProxy := testenv.StartProxy(t, strings.TrimPrefix(h.url, "nats://"))
	redisProxy := testenv.StartProxy(t, redisHost(t, h.redis))
	zombieLog := &testenv.Buffer{}
	cfg := h.config("zombie")
	cfg.NATS.URL = natsProxy.URL()
	// The held write waits for its answer instead of timing out, so the
	// former owner sees the refusal (a timed-out write would reach Redis
	// just the same).
	cfg.Redis.URL = redisProxy.RedisURL(h.redis) + "?read_timeout=2m"
	startWith(t, cfg, zombieLog)
	// Runs before the instance's cleanup: the connections come back, so
	// its shutdown does not wait for a silent server.
	t.Cleanup(natsProxy.Restore)
	zombie := h.waitMembers(1)["zombie"]

	id := contract.SeriesID{User: "fz", UserID: 41, ExchangeID: 2, Symbol: "BTC-USD", Timeframe: contract.TF1h}
	h.putState(contract.DesiredState{User: "fz", UserID: 41, ExchangeID: 2, Mode: contract.ModePositionMonitor, Symbols: []string{id.Symbol}})
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := h.statuses(1)[0].Users["fz"].Series; n != 3 {
			return fmt.Errorf("%d series running", n)
		}
		return nil
	})
	const b = 60
	data := candles(t, id, b+1, 1)
	for _, c := range data[:b] {
		h.feed(c)
	}
	h.waitUpdate(id, data[b-1].Start, true)

	// The former owner's write of its bar b is held on the way to Redis.
	redisProxy.Hold()
	late := data[b]
	late.Version += 1_000_000
	late.Close, late.High, late.Low = late.Low, late.High*1.1, late.Low*0.9
	publishOnly(t, h, late)
	testenv.WaitFor(t, 30*time.Second, "the former owner's write of bar b to be held", func() bool {
		return bytes.Contains(redisProxy.Held(), []byte(contract.IndicatorKey(id, "ema_20")))
	})
	natsProxy.Cut()

	// The feed stores and publishes bar b; a new instance takes over.
	h.feed(data[b])
	h.startInstance("successor")
	testenv.Eventually(t, 60*time.Second, func() error {
		rs := h.received(func(r received) bool {
			return r.SeriesID == id && r.Start == data[b].Start && r.instance != zombie
		})
		if len(rs) == 0 {
			return fmt.Errorf("the successor has not published bar %d", b)
		}
		return nil
	})
	if p := h.stored(id, "ema_20")[data[b].Start]; p.Version != data[b].Version {
		t.Fatalf("bar %d stored %+v, want the successor's version %d", b, p, data[b].Version)
	}

	redisProxy.Release()
	testenv.WaitFor(t, 60*time.Second, "the former owner to log its fenced write", func() bool {
		return strings.Contains(zombieLog.String(), "(fenced)")
	})
	if !strings.Contains(zombieLog.String(), "partition fenced") {
		t.Errorf("the former owner did not give the partition up:\n%s", zombieLog)
	}
	for _, name := range positionMonitor {
		if p := h.stored(id, name)[data[b].Start]; p.Version != data[b].Version {
			t.Errorf("%s bar %d: stored version %d, want the successor's %d (the fenced write replaced it)", name, b, p.Version, data[b].Version)
		}
		h.checkStored(id, name, data)
	}
}

// startWith runs an instance with cfg in this process, logging to out.
func startWith(t *testing.T, cfg daemon.Config, out *testenv.Buffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.Serve(ctx, cfg, out) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("output of %s:\n%s", cfg.Instance, out)
		}
	})
}

// publishOnly publishes c on VIGIL_CANDLES without storing it in Redis.
func publishOnly(t *testing.T, h *harness, c contract.Candle) {
	t.Helper()
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.js.Publish(context.Background(), contract.CandleSubject(c.SeriesID), data); err != nil {
		t.Fatal(err)
	}
}

// redisHost is the host:port of a redis:// URL.
func redisHost(t *testing.T, redisURL string) string {
	t.Helper()
	host, _, ok := strings.Cut(strings.TrimPrefix(redisURL, "redis://"), "/")
	if !ok || host == "" {
		t.Fatalf("no host in %s", redisURL)
	}
	return host
}
