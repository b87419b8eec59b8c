package ledger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
)

// resultsPruneEvery is how often the index forgets results older than the
// stream keeps.
const resultsPruneEvery = time.Hour

// ResultIndex knows which of the users' command ids have a result in
// VIGIL_RESULTS, so that Record can refuse an id reused after
// DedupeWindow without a round trip on the ACK path. It reads the
// stream's result subjects (headers only) with an ordered consumer; until
// it has read up to the stream's end, and whenever it falls behind, Used
// asks the stream directly.
//
// Why the index is enough once it is caught up: an id stays in its user's
// queue until its result is published, and in the queue's Recent for
// DedupeWindow after that (Queue.forget), so Record consults the index
// only for ids whose result was published more than DedupeWindow ago.
type ResultIndex struct {
	stream jetstream.Stream
	maxAge time.Duration
	cons   jetstream.ConsumeContext

	mu        sync.Mutex
	stored    map[string]time.Time // result subject → when it was stored
	caughtUp  bool
	lastPrune time.Time
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
	x := &ResultIndex{stream: stream, maxAge: stream.CachedInfo().Config.MaxAge,
		stored: map[string]time.Time{}, caughtUp: err != nil, lastPrune: time.Now()}
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
	x.stored[m.Subject()] = meta.Timestamp
	x.caughtUp = meta.NumPending == 0
	if now := time.Now(); x.maxAge > 0 && now.Sub(x.lastPrune) >= resultsPruneEvery {
		x.lastPrune = now
		for subject, at := range x.stored {
			if now.Sub(at) >= x.maxAge {
				delete(x.stored, subject)
			}
		}
	}
}

// Used reports whether user's id has a result in VIGIL_RESULTS.
func (x *ResultIndex) Used(ctx context.Context, user, id string) (bool, error) {
	subject := contract.ResultSubject(user, id)
	x.mu.Lock()
	at, ok := x.stored[subject]
	caughtUp := x.caughtUp
	x.mu.Unlock()
	switch {
	case ok:
		return x.maxAge <= 0 || time.Since(at) < x.maxAge, nil
	case caughtUp:
		return false, nil
	}
	return x.Published(ctx, user, id)
}

// Published reports whether user's id has a result in VIGIL_RESULTS,
// asking the stream: unlike Used it also sees a result published a moment
// ago that the index has not read yet.
func (x *ResultIndex) Published(ctx context.Context, user, id string) (bool, error) {
	_, err := x.stream.GetLastMsgForSubject(ctx, contract.ResultSubject(user, id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Stop ends the reading.
func (x *ResultIndex) Stop() { x.cons.Stop() }
