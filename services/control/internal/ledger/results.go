package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
)

// resultsPruneEvery is how often the index forgets results older than the
// stream keeps.
const resultsPruneEvery = time.Hour

// lookupTimeout bounds one question to VIGIL_RESULTS' leader.
const lookupTimeout = 5 * time.Second

// Headers vigil-control adds to a result (ResultMsg): what the command's
// first ACK said, for an id sent again once the command has left its
// user's queue. They are not part of the contract's result payload;
// subscribers ignore them.
const (
	// HeaderCommand is the command.
	HeaderCommand = "Vigil-Command"
	// HeaderDigest is its PayloadDigest.
	HeaderDigest = "Vigil-Digest"
	// HeaderPosition is the queue position its ACK gave.
	HeaderPosition = "Vigil-Position"
	// HeaderAcceptedAt is when it was accepted (RFC 3339, nanoseconds).
	HeaderAcceptedAt = "Vigil-Accepted-At"
)

// ResultMsg is en's result as published on vigil.result.<user>.<id>: the
// contract's Result as JSON, Nats-Msg-Id <user>:<id> (ids are per user; a
// republished result is dropped as a duplicate), and what its first ACK
// said in the headers above, which the ResultIndex reads.
func ResultMsg(en Entry) (*nats.Msg, error) {
	b, err := json.Marshal(en.Result())
	if err != nil {
		return nil, fmt.Errorf("encode result of %s: %w", en.ID, err)
	}
	msg := nats.NewMsg(contract.ResultSubject(en.User, en.ID))
	msg.Data = b
	msg.Header.Set(jetstream.MsgIDHeader, en.User+":"+en.ID)
	msg.Header.Set(HeaderCommand, string(en.Command))
	msg.Header.Set(HeaderDigest, en.Digest)
	msg.Header.Set(HeaderPosition, strconv.Itoa(en.Position))
	msg.Header.Set(HeaderAcceptedAt, en.AcceptedAt.UTC().Format(time.RFC3339Nano))
	return msg, nil
}

// ResultIndex knows the users' commands that have a result in
// VIGIL_RESULTS, with what their first ACK said, so that Record answers
// an id used before (a duplicate within DedupeWindow, a conflict after
// it) without keeping settled ids in the user's queue entry and without
// a round trip on the ACK path. It reads the headers of the stream's
// results (ResultMsg) with an ordered consumer, in stream order.
//
// Why a miss in the index can be trusted: a command stays in its user's
// queue until its result is published, and the write that removes it
// raises the entry's SettledSeq to the stream sequence of that result
// (Queue.forget). Record asks for ids the queue entry, read in the same
// compare-and-set, does not hold; the index answers once it has read the
// stream up to that entry's SettledSeq (and caught up with the stream
// since it last started reading), else the stream's leader is asked.
type ResultIndex struct {
	js     jetstream.JetStream
	maxAge time.Duration
	cons   jetstream.ConsumeContext

	mu        sync.Mutex
	stored    map[string]indexed // result subject → the command
	read      uint64             // stream sequence of the last result read
	caughtUp  bool               // read up to the stream's end since the last (re)start
	lastPrune time.Time
}

// indexed is a result the index read: the command's acceptance and when
// the result was stored.
type indexed struct {
	acceptance Recent
	stored     time.Time
}

// OpenResultIndex starts reading VIGIL_RESULTS into an index; Stop ends it.
func OpenResultIndex(ctx context.Context, js jetstream.JetStream, log *slog.Logger) (*ResultIndex, error) {
	stream, err := js.Stream(ctx, contract.StreamResults)
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w", ErrStore, contract.StreamResults, err)
	}
	_, err = stream.GetLastMsgForSubject(ctx, contract.ResultSubjects)
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("%w: read %s: %w", ErrStore, contract.StreamResults, err)
	}
	x := &ResultIndex{js: js, maxAge: stream.CachedInfo().Config.MaxAge,
		stored: map[string]indexed{}, caughtUp: err != nil, lastPrune: time.Now()}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{contract.ResultSubjects}, HeadersOnly: true})
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrStore, contract.StreamResults, err)
	}
	if x.cons, err = cons.Consume(x.add, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		log.Warn("results index: reading "+contract.StreamResults+" failed; command ids are looked up in the stream meanwhile", "err", err)
		x.mu.Lock()
		x.caughtUp = false
		x.mu.Unlock()
	})); err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrStore, contract.StreamResults, err)
	}
	return x, nil
}

// add records one result message.
func (x *ResultIndex) add(m jetstream.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.stored[m.Subject()] = indexed{acceptance: acceptanceOf("", m.Headers()), stored: meta.Timestamp}
	x.read = max(x.read, meta.Sequence.Stream)
	if meta.NumPending == 0 {
		x.caughtUp = true
	}
	if now := time.Now(); x.maxAge > 0 && now.Sub(x.lastPrune) >= resultsPruneEvery {
		x.lastPrune = now
		for subject, r := range x.stored {
			if now.Sub(r.stored) >= x.maxAge {
				delete(x.stored, subject)
			}
		}
	}
}

// acceptanceOf reads the acceptance of command id from its result's
// headers. A result published by a vigil before them has none
// (Recent.repeats then refuses the id as a conflict).
func acceptanceOf(id string, h nats.Header) Recent {
	position, _ := strconv.Atoi(h.Get(HeaderPosition))
	accepted, _ := time.Parse(time.RFC3339Nano, h.Get(HeaderAcceptedAt))
	return Recent{ID: id, Command: contract.Command(h.Get(HeaderCommand)), Digest: h.Get(HeaderDigest), Position: position, AcceptedAt: accepted}
}

// Settled returns the acceptance of user's command id when it has a
// result in VIGIL_RESULTS. atLeast is the SettledSeq of the user's queue
// entry as the caller read it: the index answers once it has read that
// far, else the stream's leader does (never a replica, which may not
// have stored a result its leader acknowledged).
func (x *ResultIndex) Settled(ctx context.Context, user, id string, atLeast uint64) (Recent, bool, error) {
	subject := contract.ResultSubject(user, id)
	x.mu.Lock()
	r, ok := x.stored[subject]
	trusted := x.caughtUp && x.read >= atLeast
	x.mu.Unlock()
	switch {
	case ok:
		r.acceptance.ID = id
		return r.acceptance, x.maxAge <= 0 || time.Since(r.stored) < x.maxAge, nil
	case trusted:
		return Recent{}, false, nil
	}
	return x.lookup(ctx, id, subject)
}

// lookup asks VIGIL_RESULTS' leader for the result on subject
// (natsx.LastFromLeader: a direct get, which the stream allows for the
// tenants, may be answered by a replica that lags).
func (x *ResultIndex) lookup(ctx context.Context, id, subject string) (Recent, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	m, err := natsx.LastFromLeader(ctx, x.js, contract.StreamResults, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Recent{}, false, nil
	}
	if err != nil {
		return Recent{}, false, fmt.Errorf("look up %s: %w", subject, err)
	}
	return acceptanceOf(id, m.Header), true, nil
}

// Stop ends the reading.
func (x *ResultIndex) Stop() { x.cons.Stop() }
