package testenv

import (
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
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
