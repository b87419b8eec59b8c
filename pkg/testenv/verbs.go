package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
)

// Replies are the answers of a service's instances to one verb request.
type Replies []contract.SvcReply

// Answered returns an error unless at least want instances answered.
func (rs Replies) Answered(want int) error {
	if len(rs) < want {
		return fmt.Errorf("%d of %d instances answered", len(rs), want)
	}
	return nil
}

// AllOK returns an error naming the first instance that answered an
// error, if one did.
func (rs Replies) AllOK() error {
	for _, r := range rs {
		if !r.OK {
			return fmt.Errorf("%s answered %+v", r.Instance, r.Error)
		}
	}
	return nil
}

// SentVerb is a verb request sent to every instance of a service whose
// replies are still to be collected.
type SentVerb struct {
	sub *nats.Subscription
}

// SendVerb sends req to vigil.svc.<svc>.<verb>, which every instance of
// the service answers, now; Collect gathers the replies later (a test
// that sends several requests in order and waits for them concurrently).
func SendVerb(nc *nats.Conn, svc contract.Svc, verb contract.Verb, req []byte) (*SentVerb, error) {
	sub, err := nc.SubscribeSync(nc.NewInbox())
	if err != nil {
		return nil, err
	}
	if err := nc.PublishRequest(contract.SvcSubject(svc, verb), sub.Subject, req); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	return &SentVerb{sub: sub}, nil
}

// Collect returns the replies that came within timeout, stopping early
// once want have come, and stops listening. Replies that are not a
// contract.SvcReply are skipped.
func (s *SentVerb) Collect(want int, timeout time.Duration) Replies {
	defer func() { _ = s.sub.Unsubscribe() }()
	var out Replies
	deadline := time.Now().Add(timeout)
	for len(out) < want {
		msg, err := s.sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		var r contract.SvcReply
		if json.Unmarshal(msg.Data, &r) == nil {
			out = append(out, r)
		}
	}
	return out
}

// CallVerb sends req to vigil.svc.<svc>.<verb>, which every instance of
// the service answers, and returns the replies that came within timeout,
// stopping early once want have come. Replies that are not a
// contract.SvcReply are skipped. Fewer than want replies are no error
// (Replies.Answered checks that; Verb is CallVerb that requires them).
func CallVerb(nc *nats.Conn, svc contract.Svc, verb contract.Verb, req []byte, want int, timeout time.Duration) (Replies, error) {
	sent, err := SendVerb(nc, svc, verb, req)
	if err != nil {
		return nil, err
	}
	return sent.Collect(want, timeout), nil
}

// Verb sends req to every instance of svc as CallVerb does and returns
// the replies of want instances; the error (with the replies that came)
// says when fewer answered within timeout. Whether they answered ok is
// the caller's to check (Replies.AllOK).
func Verb(nc *nats.Conn, svc contract.Svc, verb contract.Verb, req contract.SvcRequest, want int, timeout time.Duration) (Replies, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	replies, err := CallVerb(nc, svc, verb, body, want, timeout)
	if err == nil {
		err = replies.Answered(want)
	}
	if err != nil {
		return replies, fmt.Errorf("%s.%s: %w", svc, verb, err)
	}
	return replies, nil
}

// Statuses asks every instance of svc for its status and decodes each
// answer into T (contract.FeedStatus, IndicatorsStatus, AlertsStatus,
// ControlStatus, or a test's own view of one), by instance id. It fails
// unless want instances answered, all without an error, within timeout.
func Statuses[T any](nc *nats.Conn, svc contract.Svc, want int, timeout time.Duration) (map[string]T, error) {
	replies, err := Verb(nc, svc, contract.VerbStatus, contract.SvcRequest{}, want, timeout)
	if err != nil {
		return nil, err
	}
	if err := replies.AllOK(); err != nil {
		return nil, fmt.Errorf("%s status: %w", svc, err)
	}
	out := make(map[string]T, len(replies))
	for _, r := range replies {
		var st T
		if err := json.Unmarshal(r.Result, &st); err != nil {
			return nil, fmt.Errorf("%s status of %s: %w", svc, r.Instance, err)
		}
		out[r.Instance] = st
	}
	return out, nil
}

// PutState writes user st.User's desired state to KV VIGIL_STATE as
// vigil-control does (UpdatedAt now) and returns what it wrote.
func PutState(t testing.TB, js jetstream.JetStream, st contract.DesiredState) contract.DesiredState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		t.Fatalf("testenv: desired state of %s: %v", st.User, err)
	}
	st.UpdatedAt = time.Now().UTC()
	data, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, contract.StateKey(st.User), data); err != nil {
		t.Fatalf("testenv: desired state of %s: %v", st.User, err)
	}
	return st
}
