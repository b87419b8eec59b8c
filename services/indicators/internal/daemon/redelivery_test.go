package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// TestFailedBatchIsRedelivered makes the writes of the indicator values
// (Redis) or their publishes (JetStream) fail while candles flow, and
// checks that the failed candles are not acked, are delivered again, and
// that once the failure ends every bar is stored with TA-Lib's values
// and the newest bar is published.
func TestFailedBatchIsRedelivered(t *testing.T) {
	tests := []struct {
		name string
		// fail makes the instance's writes or publishes fail and returns
		// what ends the failure.
		fail func(t *testing.T, h *harness, redisUser string) (restore func())
	}{
		{
			name: "redis write fails",
			fail: func(t *testing.T, h *harness, redisUser string) func() {
				admin := h.admin(t)
				aclSetUser(t, admin, redisUser, "-evalsha")
				return func() { aclSetUser(t, admin, redisUser, "+evalsha") }
			},
		},
		{
			name: "publish fails",
			fail: func(t *testing.T, h *harness, _ string) func() {
				// The stream rejects every update as too large.
				ctx := context.Background()
				stream, err := h.js.Stream(ctx, contract.StreamIndicators)
				if err != nil {
					t.Fatal(err)
				}
				cfg := stream.CachedInfo().Config
				strict := cfg
				strict.MaxMsgSize = 16
				if _, err := h.js.UpdateStream(ctx, strict); err != nil {
					t.Fatal(err)
				}
				return func() {
					if _, err := h.js.UpdateStream(ctx, cfg); err != nil {
						t.Fatal(err)
					}
				}
			},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			// The instance uses a Redis user of its own, so that its
			// writes can be forbidden while the test's feed still writes.
			redisUser := fmt.Sprintf("indicators-%d", i)
			instance := *h
			instance.redis = h.redisAs(t, redisUser)
			instance.startInstance("solo")
			ids := h.waitMembers(1)
			consumer := contract.ServiceIndicators + "-" + ids["solo"]
			id := contract.SeriesID{User: "retry", UserID: 12, ExchangeID: 5, Symbol: "BTC-USD", Timeframe: contract.TF1h}
			h.monitorPositions(id)

			data := candles(t, id, 300, 1)
			h.feed(data[:100]...)
			h.waitUpdate(id, data[99].Start, true)

			restore := tt.fail(t, h, redisUser)
			h.feedBurst(data[100:200])
			// The candles of the failure are delivered again, never acked.
			testenv.Eventually(t, 30*time.Second, func() error {
				info, err := h.js.Consumer(context.Background(), contract.StreamCandles, consumer)
				if err != nil {
					return err
				}
				if ci := info.CachedInfo(); ci.NumRedelivered == 0 || ci.NumAckPending == 0 {
					return fmt.Errorf("consumer %s: %d redelivered, %d ack pending", consumer, ci.NumRedelivered, ci.NumAckPending)
				}
				return nil
			})
			restore()

			h.feedBurst(data[200:])
			last := data[len(data)-1]
			h.waitUpdate(id, last.Start, true)
			testenv.Eventually(t, 30*time.Second, func() error {
				info, err := h.js.Consumer(context.Background(), contract.StreamCandles, consumer)
				if err != nil {
					return err
				}
				if ci := info.CachedInfo(); ci.NumAckPending != 0 || ci.NumPending != 0 {
					return fmt.Errorf("consumer %s: %d candles not acked, %d not delivered", consumer, ci.NumAckPending, ci.NumPending)
				}
				return nil
			})
			for _, name := range positionMonitor {
				h.checkStored(id, name, data)
			}
			want := oracle(t, "ema_20", data)[len(data)-1]
			rs := h.received(func(r received) bool { return r.SeriesID == id && r.Start == last.Start && r.Closed })
			if got := rs[len(rs)-1].Values["ema_20"]; diff(got, want) > relTolerance {
				t.Fatalf("newest bar published ema_20 %v, TA-Lib %v", got, want)
			}
		})
	}
}

// feedBurst does what vigil-feed does with many candle updates at once:
// write them to Redis in one pipeline, then publish them all before
// waiting for the stream, so that they arrive together and are handled
// in batches of many.
func (h *harness) feedBurst(cs []contract.Candle) {
	h.t.Helper()
	ctx := context.Background()
	if _, err := h.store.WriteCandles(ctx, cs); err != nil {
		h.t.Fatal(err)
	}
	acks := make([]jetstream.PubAckFuture, len(cs))
	for i, c := range cs {
		data, err := json.Marshal(c)
		if err != nil {
			h.t.Fatal(err)
		}
		if acks[i], err = h.js.PublishAsync(contract.CandleSubject(c.SeriesID), data, jetstream.WithMsgID(c.MsgID())); err != nil {
			h.t.Fatal(err)
		}
	}
	for _, ack := range acks {
		select {
		case <-ack.Ok():
		case err := <-ack.Err():
			h.t.Fatal(err)
		case <-time.After(10 * time.Second):
			h.t.Fatal("no acknowledgement of a candle publish in 10s")
		}
	}
}

// admin is a client of the harness's Redis database as the default user.
func (h *harness) admin(t *testing.T) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(h.redis)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// redisAs creates Redis user name with every permission and returns the
// harness's Redis URL that logs in as it; the user is deleted at the end.
func (h *harness) redisAs(t *testing.T, name string) string {
	t.Helper()
	admin := h.admin(t)
	aclSetUser(t, admin, name, "reset", "on", ">secret", "~*", "&*", "+@all")
	t.Cleanup(func() { admin.Do(context.Background(), "ACL", "DELUSER", name) })
	u, err := url.Parse(h.redis)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(name, "secret")
	return u.String()
}

// aclSetUser changes the rules of Redis user name.
func aclSetUser(t *testing.T, rdb *redis.Client, name string, rules ...string) {
	t.Helper()
	args := []any{"ACL", "SETUSER", name}
	for _, r := range rules {
		args = append(args, r)
	}
	if err := rdb.Do(context.Background(), args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER %s %v: %v", name, rules, err)
	}
}
