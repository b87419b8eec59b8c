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

// CallVerb sends req to vigil.svc.<svc>.<verb>, which every instance of
// the service answers, and returns the replies that came within timeout,
// stopping early once want have come. Replies that are not a
// contract.SvcReply are skipped.
func CallVerb(nc *nats.Conn, svc contract.Svc, verb contract.Verb, req []byte, want int, timeout time.Duration) ([]contract.SvcReply, error) {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(contract.SvcSubject(svc, verb), inbox, req); err != nil {
		return nil, err
	}
	var out []contract.SvcReply
	deadline := time.Now().Add(timeout)
	for len(out) < want {
		msg, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		var r contract.SvcReply
		if json.Unmarshal(msg.Data, &r) == nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// Statuses asks every instance of svc for its status and decodes each
// answer into T (contract.FeedStatus, IndicatorsStatus, AlertsStatus,
// ControlStatus, or a test's own view of one), by instance id. It fails
// unless want instances answered, all without an error, within timeout.
func Statuses[T any](nc *nats.Conn, svc contract.Svc, want int, timeout time.Duration) (map[string]T, error) {
	replies, err := CallVerb(nc, svc, contract.VerbStatus, []byte(`{}`), want, timeout)
	if err != nil {
		return nil, err
	}
	if len(replies) < want {
		return nil, fmt.Errorf("%d of %d %s instances answered status", len(replies), want, svc)
	}
	out := make(map[string]T, len(replies))
	for _, r := range replies {
		if !r.OK {
			return nil, fmt.Errorf("%s status of %s: %+v", svc, r.Instance, r.Error)
		}
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
