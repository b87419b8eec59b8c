package figures

// This file: the floors of figures 1 and 2, a responder in a process of
// its own that answers a request only after a JetStream publish-ack (the
// least any ACK sent after a durable write costs) and that runs the least
// a pause or resume must do (record, ACK, write the desired state, three
// ordered steps to other processes, publish the result durably).

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

// floorRTTSubject is where the floor responder answers at once: a bare
// request to another process, as `nats req` to a trivial responder sees it.
const floorRTTSubject = "bench.floor.rtt"

// floorPublishSubject asks the floor responder to time one JetStream
// publish-ack from its own process (as vigil-control makes it) and answer
// with the nanoseconds it took.
const floorPublishSubject = "bench.floor.publish"

// floorSequenceSubject is where the floor responder takes figure 2's
// commands; the header floorRespondersHeader says how many answers each
// step waits for.
const floorSequenceSubject = "bench.floor.sequence"

// floorRespondersHeader carries the number of bench.sg responders.
const floorRespondersHeader = "Bench-Responders"

// floorResultSubject is the prefix of the subjects where the floor
// responder publishes a sequence's result (captured by BENCH_ACK, like a
// result by VIGIL_RESULTS).
const floorResultSubject = "bench.ack.floor.result"

// floorResultOK is the body of a floor sequence's result when every write
// and step succeeded; otherwise the body is the error.
var floorResultOK = []byte(`{"id":"01JD00000000000000000000000","user":"seq-0","command":"pause","status":"succeeded","result":{"status":"paused"},"steps":[{"service":"vigil-alerts","verb":"pause","instances":1,"acked":1,"ms":0.4},{"service":"vigil-feed","verb":"pause","instances":1,"acked":1,"ms":0.4},{"service":"vigil-indicators","verb":"pause","instances":1,"acked":1,"ms":0.4}]}`)

// ServeFloor serves the floors until ctx ends: on bench.floor it answers
// an ACK-sized body after a JetStream publish-ack of the request (stream
// BENCH_ACK, which the figures create), a request to another process plus
// a durable write, what vigil-control's ACK is made of; on
// bench.floor.rtt it answers at once; on bench.floor.publish it times one
// publish-ack of its own; on bench.floor.sequence it runs the floor of a
// pause or resume (floorResponder.sequence).
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
	f := &floorResponder{nc: nc, js: js}
	handlers := map[string]nats.MsgHandler{
		floorSubject: func(m *nats.Msg) {
			if err := f.publishAck(ctx, "bench.ack.floor.", m.Data); err != nil {
				_ = m.Respond([]byte(`{"accepted":false}`))
				return
			}
			_ = m.Respond(ackReply)
		},
		floorRTTSubject: func(m *nats.Msg) { _ = m.Respond(ackReply) },
		floorPublishSubject: func(m *nats.Msg) {
			began := time.Now()
			if err := f.publishAck(ctx, "bench.ack.floor.publish.", ackReply); err != nil {
				_ = m.Respond([]byte(err.Error()))
				return
			}
			_ = m.Respond(strconv.AppendInt(nil, int64(time.Since(began)), 10))
		},
		floorSequenceSubject: func(m *nats.Msg) {
			if err := f.sequence(ctx, m); err != nil {
				_ = f.publishAck(ctx, floorResultSubject+".", []byte(err.Error()))
			}
		},
	}
	for subject, h := range handlers {
		if _, err := nc.Subscribe(subject, h); err != nil {
			return fmt.Errorf("floor responder: %w", err)
		}
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// floorResponder is the floor process's connection and the count of its
// publishes (each one's Nats-Msg-Id and subject are unique).
type floorResponder struct {
	nc *nats.Conn
	js jetstream.JetStream
	n  atomic.Int64
}

// publishAck publishes data on prefix followed by the next publish number
// (so BENCH_ACK, keeping one message per subject, stays small) and waits
// for the stream's acknowledgement.
func (f *floorResponder) publishAck(ctx context.Context, prefix string, data []byte) error {
	i := strconv.FormatInt(f.n.Add(1), 10)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := f.js.Publish(ctx, prefix+i[len(i)-1:], data, jetstream.WithMsgID("floor-"+i))
	return err
}

// sequence is the least a pause or resume costs under the contract: the
// command recorded durably, the ACK, the desired state written, three
// ordered scatter-gathers over the services' instances (bench.sg, in the
// runner's process), the result published to a stream.
func (f *floorResponder) sequence(ctx context.Context, m *nats.Msg) error {
	responders, err := strconv.Atoi(m.Header.Get(floorRespondersHeader))
	if err != nil || responders < 1 {
		_ = m.Respond([]byte(`{"accepted":false}`))
		return fmt.Errorf("floor sequence: header %s: %q is not a positive count", floorRespondersHeader, m.Header.Get(floorRespondersHeader))
	}
	if err := f.publishAck(ctx, "bench.ack.floor.command.", m.Data); err != nil {
		_ = m.Respond([]byte(`{"accepted":false}`))
		return fmt.Errorf("floor sequence: record: %w", err)
	}
	if err := m.Respond(ackReply); err != nil {
		return fmt.Errorf("floor sequence: ack: %w", err)
	}
	if err := f.publishAck(ctx, "bench.ack.floor.state.", sgRequest); err != nil {
		return fmt.Errorf("floor sequence: desired state: %w", err)
	}
	for range 3 {
		if err := scatterGather(f.nc, responders); err != nil {
			return fmt.Errorf("floor sequence: %w", err)
		}
	}
	if err := f.publishAck(ctx, floorResultSubject+".", floorResultOK); err != nil {
		return fmt.Errorf("floor sequence: result: %w", err)
	}
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
