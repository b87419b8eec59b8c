package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
)

// BenchmarkClosedBars measures the throughput of one instance: b.N closed
// hourly bars spread over 20 users with 3 rules each, one bar in ten
// firing an alert (published to VIGIL_ALERTS and stored in Postgres), each
// bar saving the engine memory. ns/op is the time per update from the
// first publish until every update is acknowledged.
func BenchmarkClosedBars(b *testing.B) {
	e := newEnv(b)
	const users = 20
	var states []contract.DesiredState
	for u := range users {
		st := userState(fmt.Sprintf("user%02d", u), int64(u+1), rsiHot, emaGolden, price100k)
		states = append(states, st)
		e.putState(st)
	}
	e.start("bench")
	// The clock stays at bar 0: later bars are never stale.
	e.clock.Set(time.Unix(base+3601, 0))
	ctx := context.Background()
	b.ResetTimer()
	began := time.Now()
	var acks []jetstream.PubAckFuture
	for i := range b.N {
		st := states[i%users]
		n := i / users
		rsi := 60.0
		if n%10 == 9 {
			rsi = 75
		}
		u := rsiBar(n, rsi, 99_000).update(st, "BTC-USD")
		u.Values["ema_20"] = contract.Fields{"value": 100}
		u.Values["ema_50"] = contract.Fields{"value": 101}
		doc, err := json.Marshal(u)
		if err != nil {
			b.Fatal(err)
		}
		msg := nats.NewMsg(contract.IndicatorSubject(u.SeriesID))
		msg.Data = doc
		msg.Header.Set(jetstream.MsgIDHeader, u.SeriesID.String()+":"+strconv.FormatInt(u.Start, 10))
		ack, err := e.js.PublishMsgAsync(msg)
		if err != nil {
			b.Fatal(err)
		}
		acks = append(acks, ack)
	}
	for _, a := range acks {
		select {
		case <-a.Ok():
		case err := <-a.Err():
			b.Fatal(err)
		case <-ctx.Done():
		}
	}
	e.settle()
	elapsed := time.Since(began)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "updates/s")
	fired, err := e.counted.Sum("vigil.alerts.fired")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(fired)/elapsed.Seconds(), "alerts/s")
}
