package figures

// This file: figure 1's floor, a responder in a process of its own that
// answers a request only after a JetStream publish-ack, the least any
// ACK sent after a durable write costs.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// FloorResponderEnv, set to a NATS URL, makes the bench binary serve as
// figure 1's floor responder (ServeFloor) instead of running figures; Ack
// starts it so in a process of its own.
const FloorResponderEnv = "VIGIL_BENCH_FLOOR_RESPONDER"

// floorSubject is where the floor responder takes requests.
const floorSubject = "bench.floor"

// ServeFloor answers each request on bench.floor with an ACK-sized body
// after publishing the request on bench.ack.floor.<n> (stream BENCH_ACK,
// which Ack creates) and receiving the stream's acknowledgement: a
// request to another process plus a durable write, what vigil-control's
// ACK is made of. It serves until ctx ends.
func ServeFloor(ctx context.Context, url string) error {
	nc, err := nats.Connect(url, nats.Name("bench-floor"))
	if err != nil {
		return fmt.Errorf("floor responder: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	var n atomic.Int64
	_, err = nc.Subscribe(floorSubject, func(m *nats.Msg) {
		i := n.Add(1)
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := js.Publish(pctx, "bench.ack.floor."+strconv.FormatInt(i%8, 10), m.Data,
			jetstream.WithMsgID("floor-"+strconv.FormatInt(i, 10))); err != nil {
			_ = m.Respond([]byte(`{"accepted":false}`))
			return
		}
		_ = m.Respond(ackReply)
	})
	if err != nil {
		return fmt.Errorf("floor responder: %w", err)
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// startFloor runs this binary as the floor responder on url and waits
// until it answers; the returned stop ends it.
func startFloor(ctx context.Context, nc *nats.Conn, url string) (stop func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("floor responder: %w", err)
	}
	pctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(pctx, self)
	cmd.Env = append(os.Environ(), FloorResponderEnv+"="+url)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("floor responder: %w", err)
	}
	stop = func() { cancel(); _ = cmd.Wait() }
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := nc.Request(floorSubject, nil, time.Second)
		if err == nil && string(m.Data) == string(ackReply) {
			return stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return nil, errors.Join(errors.New("floor responder did not answer within 30s"), err)
		}
	}
}
