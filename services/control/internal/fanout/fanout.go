// Package fanout runs one step of a command sequence: a request to
// vigil.svc.<service>.<verb> that every instance of the service answers.
//
// The instances expected to answer are those that answer $SRV.PING.<micro
// name>, sent at the same moment as the request, together with those whose
// membership heartbeats are live (membership.Roster) and any instance that answers
// the request. Ping answers are collected until every live member has
// answered, or else until PingStall passes without a new one (PingWait for
// the first). The step is confirmed when every expected instance answered
// ok; it fails naming each instance that did not answer in time or
// answered an error.
package fanout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/telemetry"
)

// ErrNotConfirmed reports a step that not every instance confirmed.
var ErrNotConfirmed = errors.New("step not confirmed")

// Defaults of Options.
const (
	DefaultPingWait  = time.Second
	DefaultPingStall = 100 * time.Millisecond
)

// Options tune the instance discovery.
type Options struct {
	// PingWait is how long to wait for the first $SRV.PING answer.
	PingWait time.Duration
	// PingStall ends the discovery when no further answer came for this
	// long (unless every live member answered before).
	PingStall time.Duration
}

// LiveMembers lists the live instances of a service by membership.
type LiveMembers interface {
	Live(service string) []string
}

// Caller sends the steps.
type Caller struct {
	nc      *nats.Conn
	members LiveMembers
	opts    Options
	tracer  trace.Tracer
}

// NewCaller returns a caller on nc; members may be nil (then $SRV.PING alone
// finds the instances).
func NewCaller(nc *nats.Conn, members LiveMembers, opts Options) *Caller {
	if opts.PingWait <= 0 {
		opts.PingWait = DefaultPingWait
	}
	if opts.PingStall <= 0 {
		opts.PingStall = DefaultPingStall
	}
	return &Caller{nc: nc, members: members, opts: opts, tracer: otel.Tracer("vigil.dev/services/control/fanout")}
}

// Answers is the outcome of one step.
type Answers struct {
	Step contract.Step
	// Replies are the ok replies, by instance name order.
	Replies []contract.SvcReply
}

// Call sends req to vigil.svc.<svc>.<verb>, waits up to timeout for every
// instance, and returns the step. It returns an error wrapping
// ErrNotConfirmed (the step's Error says why) unless every instance
// confirmed; ctx ending early is returned as ctx's error.
func (c *Caller) Call(ctx context.Context, svc contract.Svc, verb contract.Verb, req contract.SvcRequest, timeout time.Duration) (Answers, error) {
	name := svc.MicroName()
	subject := contract.SvcSubject(svc, verb)
	ctx, span := c.tracer.Start(ctx, subject, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", subject),
			attribute.String("vigil.user", req.User), attribute.String("vigil.command_id", req.CommandID)))
	defer span.End()
	answers, err := c.call(ctx, name, subject, req, timeout)
	answers.Step.Service, answers.Step.Verb = name, verb
	span.SetAttributes(attribute.Int("vigil.instances", answers.Step.Instances), attribute.Int("vigil.acked", answers.Step.Acked))
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	return answers, err
}

func (c *Caller) call(ctx context.Context, name, subject string, req contract.SvcRequest, timeout time.Duration) (Answers, error) {
	start := time.Now()
	body, err := json.Marshal(req)
	if err != nil {
		return Answers{}, fmt.Errorf("fanout: encode %s request: %w", subject, err)
	}
	replies := make(chan *nats.Msg, 1024)
	pings := make(chan *nats.Msg, 1024)
	replyInbox, pingInbox := c.nc.NewInbox(), c.nc.NewInbox()
	for inbox, ch := range map[string]chan *nats.Msg{replyInbox: replies, pingInbox: pings} {
		sub, err := c.nc.ChanSubscribe(inbox, ch)
		if err != nil {
			return Answers{}, fmt.Errorf("fanout: subscribe: %w", err)
		}
		defer sub.Unsubscribe() //nolint:errcheck // best effort on the way out
	}
	var expected []string
	if c.members != nil {
		expected = c.members.Live(name)
	}
	msg := &nats.Msg{Subject: subject, Reply: replyInbox, Data: body, Header: nats.Header{}}
	telemetry.Inject(ctx, msg)
	if err := c.nc.PublishRequest("$SRV.PING."+name, pingInbox, nil); err != nil {
		return Answers{}, fmt.Errorf("fanout: ping %s: %w", name, err)
	}
	if err := c.nc.PublishMsg(msg); err != nil {
		return Answers{}, fmt.Errorf("fanout: request %s: %w", subject, err)
	}

	g := gather{expected: set(expected), pinged: map[string]bool{}, answers: map[string]contract.SvcReply{}}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	pingTimer := time.NewTimer(c.opts.PingWait)
	defer pingTimer.Stop()
	timedOut := false
	for !g.complete() {
		select {
		case m := <-pings:
			if noResponders(m) {
				g.pingDone = true
				continue
			}
			var p micro.Ping
			if json.Unmarshal(m.Data, &p) == nil && p.Name == name && p.ID != "" {
				g.pinged[p.ID] = true
			}
			if g.allMembersPinged() {
				g.pingDone = true
			} else if !g.pingDone {
				pingTimer.Reset(c.opts.PingStall)
			}
		case m := <-replies:
			if noResponders(m) {
				continue
			}
			var r contract.SvcReply
			if err := json.Unmarshal(m.Data, &r); err != nil || r.Instance == "" {
				g.malformed++
				continue
			}
			g.answers[r.Instance] = r
		case <-pingTimer.C:
			g.pingDone = true
		case <-deadline.C:
			timedOut = true
		case <-ctx.Done():
			return Answers{Step: g.step(start, timeout, false)}, ctx.Err()
		}
		if timedOut {
			break
		}
	}
	step := g.step(start, timeout, timedOut)
	out := Answers{Step: step}
	for _, id := range slices.Sorted(maps.Keys(g.answers)) {
		if r := g.answers[id]; r.OK {
			out.Replies = append(out.Replies, r)
		}
	}
	if step.Error != nil {
		return out, fmt.Errorf("%w: %s", ErrNotConfirmed, step.Error.Message)
	}
	return out, nil
}

// gather is the state of one step's answers.
type gather struct {
	expected  map[string]bool // live by membership
	pinged    map[string]bool // answered $SRV.PING
	answers   map[string]contract.SvcReply
	malformed int
	pingDone  bool
}

func (g *gather) allMembersPinged() bool {
	if len(g.expected) == 0 {
		return false
	}
	for id := range g.expected {
		if !g.pinged[id] {
			return false
		}
	}
	return true
}

// instances is every instance expected or heard from, sorted.
func (g *gather) instances() []string {
	all := map[string]bool{}
	for _, m := range []map[string]bool{g.expected, g.pinged} {
		for id := range m {
			all[id] = true
		}
	}
	for id := range g.answers {
		all[id] = true
	}
	return slices.Sorted(maps.Keys(all))
}

func (g *gather) complete() bool {
	if !g.pingDone {
		return false
	}
	for _, id := range g.instances() {
		if _, ok := g.answers[id]; !ok {
			return false
		}
	}
	return true
}

// step summarises the answers; Error is set unless every instance
// confirmed.
func (g *gather) step(start time.Time, timeout time.Duration, timedOut bool) contract.Step {
	instances := g.instances()
	step := contract.Step{Instances: len(instances), Ms: float64(time.Since(start).Microseconds()) / 1000}
	var reasons []string
	var code contract.ErrorCode
	for _, id := range instances {
		o := g.outcome(id, timeout)
		step.Outcomes = append(step.Outcomes, o)
		switch o.Outcome {
		case contract.InstanceAnswered:
			step.Acked++
			continue
		case contract.InstanceFailed:
			reasons = append(reasons, fmt.Sprintf("%s (%s: %s)", id, o.Error.Code, o.Error.Message))
			if code == "" {
				code = o.Error.Code
			}
		default:
			reasons = append(reasons, fmt.Sprintf("%s (%s)", id, o.Error.Message))
		}
		step.Missing = append(step.Missing, id)
	}
	if code == "" && len(step.Missing) > 0 {
		code = contract.CodeTimeout
	}
	switch {
	case len(instances) == 0 && timedOut:
		step.Error = &contract.Error{Code: contract.CodeTimeout, Message: "no instance answered within " + timeout.String()}
	case len(instances) == 0:
		step.Error = &contract.Error{Code: contract.CodeUnavailable, Message: "no instance is running (none answered $SRV.PING)"}
	case len(step.Missing) > 0:
		step.Error = &contract.Error{Code: code, Message: "not confirmed by " + strings.Join(reasons, ", ")}
	case g.malformed > 0:
		step.Error = &contract.Error{Code: contract.CodeInternal, Message: fmt.Sprintf("%d answers were not service replies", g.malformed)}
	}
	return step
}

// outcome is how instance id took the step so far: answered, failed with
// its error, or missing (no answer within timeout).
func (g *gather) outcome(id string, timeout time.Duration) contract.InstanceOutcome {
	r, ok := g.answers[id]
	switch {
	case ok && r.OK:
		return contract.InstanceOutcome{Instance: id, Outcome: contract.InstanceAnswered}
	case ok:
		e := r.Error
		if e == nil {
			e = &contract.Error{Code: contract.CodeInternal, Message: "answered ok:false without an error"}
		}
		return contract.InstanceOutcome{Instance: id, Outcome: contract.InstanceFailed, Error: e}
	}
	return contract.InstanceOutcome{Instance: id, Outcome: contract.InstanceMissing,
		Error: &contract.Error{Code: contract.CodeTimeout, Message: "no answer within " + timeout.String()}}
}

// noResponders reports the server's 503 status message for a request
// nobody subscribes to.
func noResponders(m *nats.Msg) bool {
	return len(m.Data) == 0 && m.Header.Get("Status") == "503"
}

func set(ids []string) map[string]bool {
	out := make(map[string]bool, len(ids))
	for _, id := range ids {
		out[id] = true
	}
	return out
}
