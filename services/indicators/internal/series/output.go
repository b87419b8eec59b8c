package series

// This file: indicator updates written to Redis (fenced) and published.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/telemetry"
)

// msgID is the Nats-Msg-Id of an update: "<series>:<start>:<version>".
func msgID(u contract.IndicatorUpdate) string {
	return u.SeriesID.String() + ":" + strconv.FormatInt(u.Start, 10) + ":" + strconv.FormatInt(u.Version, 10)
}

// publish sends u on its vigil.indicator subject (JetStream, deduplicated
// by msgID) with ctx's trace context and waits for the stream's
// acknowledgement.
func (e *Engine) publish(ctx context.Context, u contract.IndicatorUpdate) error {
	msg, err := e.updateMsg(ctx, u)
	if err != nil {
		return err
	}
	if _, err := e.js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("publish update of %s: %w", u.SeriesID, err)
	}
	e.metrics.countUpdate(ctx, u.Closed)
	return nil
}

// updateMsg is the message of update u on its vigil.indicator subject,
// stamped with the time it was computed, deduplicated by msgID and
// carrying ctx's trace context.
func (e *Engine) updateMsg(ctx context.Context, u contract.IndicatorUpdate) (*nats.Msg, error) {
	u.ComputedAt = time.Now().UTC()
	data, err := json.Marshal(u)
	if err != nil {
		return nil, fmt.Errorf("encode update of %s: %w", u.SeriesID, err)
	}
	msg := nats.NewMsg(contract.IndicatorSubject(u.SeriesID))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, msgID(u))
	msg.Header.Set(InstanceHeader, e.instance)
	telemetry.Inject(ctx, msg)
	return msg, nil
}

// emit writes the updates to Redis, then publishes them, all with ctx's
// trace context.
func (e *Engine) emit(ctx context.Context, ups []contract.IndicatorUpdate) error {
	out := make([]outgoing, len(ups))
	for i, up := range ups {
		out[i] = outgoing{ctx: ctx, update: up}
	}
	return e.send(ctx, out)
}

// outgoing is an update to write and publish, with the context of the
// candle it came from (its trace).
type outgoing struct {
	ctx    context.Context
	update contract.IndicatorUpdate
}

// send writes the updates to Redis in pipelines of redisstore.PipelineChunk, then publishes them
// (publishAll). When it returns nil, Redis and the stream hold every
// update; ctx bounds the whole. Updates refused by their fence (write) are
// not published: once the others are, send returns the
// *redisstore.FencedError. The caller holds e.mu. (Candle batches take
// the same steps in the pipeline, sendBatch.)
func (e *Engine) send(ctx context.Context, out []outgoing) error {
	if len(out) == 0 {
		return nil
	}
	written := e.write(ctx, updatesOf(out))
	var fenced *redisstore.FencedError
	if written != nil && !errors.As(written, &fenced) {
		return fmt.Errorf("write %d indicator updates: %w", len(out), written)
	}
	if fenced != nil {
		out = slices.DeleteFunc(slices.Clone(out), func(o outgoing) bool { return slices.Contains(fenced.Series, o.update.SeriesID) })
	}
	if err := e.publishAll(ctx, out); err != nil {
		return err
	}
	if fenced != nil {
		return written
	}
	return nil
}

// publishAll publishes the updates in order without waiting for each
// (updates of one series keep their order on the stream) and waits for
// every acknowledgement of the stream; ctx bounds the whole.
func (e *Engine) publishAll(ctx context.Context, out []outgoing) error {
	acks := make([]jetstream.PubAckFuture, len(out))
	for i, o := range out {
		msg, err := e.updateMsg(o.ctx, o.update)
		if err != nil {
			return err
		}
		if acks[i], err = e.js.PublishMsgAsync(msg); err != nil {
			return fmt.Errorf("publish update of %s: %w", o.update.SeriesID, err)
		}
	}
	for i, ack := range acks {
		select {
		case <-ack.Ok():
			e.metrics.countUpdate(out[i].ctx, out[i].update.Closed)
		case err := <-ack.Err():
			return fmt.Errorf("publish update of %s: %w", out[i].update.SeriesID, err)
		case <-ctx.Done():
			return fmt.Errorf("publish update of %s: %w", out[i].update.SeriesID, ctx.Err())
		}
	}
	return nil
}

// write stores updates in Redis, each fenced by this instance's epoch of
// its series' partition (ARCHITECTURE §7): a former owner that is dead or
// cut off cannot replace the values of the instance that took the
// partition after it. The updates of a partition that another instance
// took since are refused: they are counted
// (vigil.indicators.fenced), logged, their series dropped and the
// partition given up (Owner.Fenced), and the error is the
// *redisstore.FencedError naming them; the other updates are written.
// The caller holds e.mu.
func (e *Engine) write(ctx context.Context, ups []contract.IndicatorUpdate) error {
	fences, err := e.writeFenced(ctx, ups)
	e.dropFenced(ctx, fences, err)
	return err
}

// writeFenced is write's Redis part: it touches no engine state, so it
// runs without e.mu (rebuildOutside); the caller hands the fences used
// and the error to dropFenced, holding e.mu.
func (e *Engine) writeFenced(ctx context.Context, ups []contract.IndicatorUpdate) (map[contract.SeriesID]redisstore.Fence, error) {
	fences := map[contract.SeriesID]redisstore.Fence{}
	err := e.store.WriteIndicatorUpdatesFenced(ctx, ups, func(id contract.SeriesID) redisstore.Fence {
		f, ok := fences[id]
		if !ok {
			f = e.owner.Fence(id)
			fences[id] = f
		}
		return f
	})
	return fences, err
}

// dropFenced is write's state part: when err is a *redisstore.FencedError
// it counts and logs the refused series, drops them and gives their
// partitions up. The caller holds e.mu.
func (e *Engine) dropFenced(ctx context.Context, fences map[contract.SeriesID]redisstore.Fence, err error) {
	var fenced *redisstore.FencedError
	if errors.As(err, &fenced) {
		for _, id := range fenced.Series {
			e.metrics.countFenced(ctx)
			e.log.WarnContext(ctx, "indicator write refused: another instance took the series' partition (fenced); this instance stops owning it",
				"series", id.String(), "epoch", fences[id].Epoch)
			delete(e.series, id)
			e.owner.Fenced(id, fences[id])
		}
	}
}
