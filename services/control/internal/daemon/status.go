package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"vigil.dev/pkg/contract"
	"vigil.dev/services/control/internal/ledger"
)

// StatusSubject is the status verb of control, answered by every instance.
var StatusSubject = contract.SvcSubject(contract.SvcControl, contract.VerbStatus)

// status answers StatusSubject with a contract.SvcReply whose result is a
// contract.ControlStatus; a request {"user":"alice"} narrows it to alice.
func (i *instance) status(r micro.Request) {
	reply := contract.SvcReply{Service: contract.ServiceControl, Instance: i.ID(), OK: true}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := i.snapshot(ctx, r.Data())
	if err == nil {
		reply.Result, err = json.Marshal(st)
	}
	if err != nil {
		reply.OK, reply.Error = false, contract.ErrorFrom(err, contract.CodeUnavailable)
	}
	if err := r.RespondJSON(reply); err != nil {
		i.log.Warn("status reply failed", "err", err)
	}
}

func (i *instance) snapshot(ctx context.Context, body []byte) (contract.ControlStatus, error) {
	req := contract.SvcRequest{}
	if len(body) > 0 {
		var err error
		if req, err = contract.DecodeStrict[contract.SvcRequest](body); err != nil {
			return contract.ControlStatus{}, err
		}
	}
	depths := i.ledger.Depths()
	st := contract.ControlStatus{Instance: i.ID(), StartedAt: i.started, Members: i.group.Members(),
		Users: map[string]contract.ControlUserStatus{}, RunningHere: i.exec.Running()}
	for user, d := range depths {
		if req.User == "" || req.User == user {
			st.Users[user] = contract.ControlUserStatus{QueueDepth: d, Owner: i.group.Owner(user)}
		}
	}
	if req.User != "" {
		if _, ok := st.Users[req.User]; !ok {
			st.Users[req.User] = contract.ControlUserStatus{Owner: i.group.Owner(req.User)}
		}
	}
	return st, nil
}

// registerMetrics reports the queue depth of the users this instance owns
// (summed over the instances it is the whole queue) until the instance
// stops or ctx ends.
func (i *instance) registerMetrics(ctx context.Context) error {
	meter := otel.Meter("vigil.dev/services/control")
	depth, err := meter.Int64ObservableGauge("vigil.control.queue.depth",
		metric.WithDescription("queued commands of the users this instance owns"))
	if err != nil {
		return fmt.Errorf("queue depth metric: %w", err)
	}
	reg, err := meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		depths := i.ledger.Depths()
		queued := 0
		for user, d := range depths {
			if i.group.Owns(user) {
				queued += d.Queued
			}
		}
		o.ObserveInt64(depth, int64(queued))
		return nil
	}, depth)
	if err != nil {
		return fmt.Errorf("queue depth metric: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = reg.Unregister() })
	i.svc.OnShutdown(func(context.Context) error {
		stop()
		return reg.Unregister()
	})
	return nil
}

// streams publishes results and progress events to VIGIL_RESULTS.
type streams struct {
	js jetstream.JetStream
}

// PublishResult publishes en's result (ledger.ResultMsg: a republished
// result is dropped as a duplicate) and returns its stream sequence, the
// first one's for a duplicate.
func (s streams) PublishResult(ctx context.Context, en ledger.Entry) (uint64, error) {
	msg, err := ledger.ResultMsg(en)
	if err != nil {
		return 0, err
	}
	ack, err := s.js.PublishMsg(ctx, msg)
	if err != nil {
		return 0, fmt.Errorf("publish %s: %w", msg.Subject, err)
	}
	return ack.Sequence, nil
}

// PublishAudit publishes e's audit record to VIGIL_COMMANDS.
func (s streams) PublishAudit(ctx context.Context, e ledger.Entry) error {
	return ledger.PublishAudit(ctx, s.js, e)
}

// PublishProgress publishes p on vigil.progress.<user>.<id>.
func (s streams) PublishProgress(ctx context.Context, user string, p contract.Progress) error {
	return s.publish(ctx, contract.ProgressSubject(user, p.ID), fmt.Sprintf("%s:%s:control:%d", user, p.ID, p.Done), p)
}

func (s streams) publish(ctx context.Context, subject, msgID string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", subject, err)
	}
	msg := nats.NewMsg(subject)
	msg.Data = b
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	if _, err := s.js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}
