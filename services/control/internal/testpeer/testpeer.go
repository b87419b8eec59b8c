// Package testpeer runs stand-ins for vigil-feed, vigil-indicators and
// vigil-alerts in control's tests: real NATS micro services (pkg/service)
// that answer the vigil.svc verbs the way docs/design.md describes, join
// membership like the real services, record every call in a shared
// Recorder, and can be told to fail, hang or disappear.
package testpeer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/service"
)

// Call is one request a peer received.
type Call struct {
	// Seq orders the calls of every peer sharing the recorder.
	Seq       int
	Service   contract.Svc
	Instance  string
	Verb      contract.Verb
	User      string
	CommandID string
	State     *contract.DesiredState
	Args      json.RawMessage
	// TraceID is the trace the request carried.
	TraceID string
	At      time.Time
}

// Recorder collects the calls of several peers in arrival order.
type Recorder struct {
	mu    sync.Mutex
	calls []Call
}

func (r *Recorder) add(c Call) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c.Seq = len(r.calls)
	r.calls = append(r.calls, c)
}

// Calls returns the calls so far.
func (r *Recorder) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Call(nil), r.calls...)
}

// For returns the calls of one command, in order.
func (r *Recorder) For(commandID string) []Call {
	var out []Call
	for _, c := range r.Calls() {
		if c.CommandID == commandID {
			out = append(out, c)
		}
	}
	return out
}

// Behaviour is how a peer answers a verb.
type Behaviour int

// The behaviours.
const (
	// Answer answers ok like the real service.
	Answer Behaviour = iota
	// Fail answers ok:false with an internal error.
	Fail
	// Hang does not answer until Release (or the end of the test).
	Hang
)

// Options configure a peer.
type Options struct {
	// Owner makes the peer the owner of every user: it answers with
	// results, the others with {"owner":false}.
	Owner bool
	// GapFilled is feed.resume's gap_filled result.
	GapFilled contract.GapFill
	// BackfillPages is how many progress events feed.backfill publishes.
	BackfillPages int
}

// Peer is one instance of a stand-in service.
type Peer struct {
	Svc  contract.Svc
	opts Options
	rec  *Recorder
	nc   *nats.Conn
	svc  *service.Service
	grp  *membership.Group

	mu        sync.Mutex
	behaviour map[contract.Verb]Behaviour
	gate      chan struct{}
	backfills map[string][]context.CancelFunc // user → running backfills
	jobs      map[string]*peerJob             // command id → running backfill
	gone      bool
	// failRevs are the desired-state revisions each verb refuses: how
	// many more times (-1: always).
	failRevs map[contract.Verb]map[revOf]int
	// applied is the revision of each user's last apply answered ok.
	applied map[string]int64
}

// Start starts a peer of svc on the NATS server at url, recording into rec.
// It is shut down at the end of the test.
func Start(t testing.TB, url string, svc contract.Svc, rec *Recorder, opts Options) *Peer {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name("testpeer "+string(svc)))
	if err != nil {
		t.Fatalf("testpeer: connect: %v", err)
	}
	p := &Peer{Svc: svc, opts: opts, rec: rec, nc: nc, behaviour: map[contract.Verb]Behaviour{},
		gate: make(chan struct{}), backfills: map[string][]context.CancelFunc{}, jobs: map[string]*peerJob{},
		failRevs: map[contract.Verb]map[revOf]int{}, applied: map[string]int64{}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p.svc, err = service.Start(nc, service.Config{Svc: svc, Name: svc.MicroName(), Description: "test stand-in", Instance: "peer"}, log,
		func(context.Context, string) any { return p.status() })
	if err != nil {
		t.Fatalf("testpeer: start %s: %v", svc, err)
	}
	for _, v := range []contract.Verb{contract.VerbPause, contract.VerbResume, contract.VerbApply,
		contract.VerbBackfill, contract.VerbRecompute, contract.VerbForget, contract.VerbCancel, contract.VerbPlan} {
		if err := p.svc.Handle(v, p.handler(v)); err != nil {
			t.Fatalf("testpeer: handle %s: %v", v, err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("testpeer: flush: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("testpeer: jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if p.grp, err = membership.Join(ctx, js, svc.MicroName(), p.svc.ID(), membership.Options{}); err != nil {
		t.Fatalf("testpeer: join: %v", err)
	}
	t.Cleanup(p.stop)
	return p
}

// peerStatus is a peer's status: the revision of each user's last apply
// it answered ok, as the services report it.
type peerStatus struct {
	Peer  bool                      `json:"peer"`
	Users map[string]peerUserStatus `json:"users"`
}

// peerUserStatus is one user in a peer's status.
type peerUserStatus struct {
	Revision int64 `json:"revision"`
}

func (p *Peer) status() peerStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := peerStatus{Peer: true, Users: map[string]peerUserStatus{}}
	for user, rev := range p.applied {
		st.Users[user] = peerUserStatus{Revision: rev}
	}
	return st
}

// ID is the peer's micro service id, as $SRV.PING reports it.
func (p *Peer) ID() string { return p.svc.ID() }

// Set makes the peer answer verb with b.
func (p *Peer) Set(verb contract.Verb, b Behaviour) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.behaviour[verb] = b
}

// revOf is a desired-state revision of a user.
type revOf struct {
	user string
	rev  int64
}

// FailRevision makes the peer refuse verb (as Fail does) when the
// request's desired state is user's revision rev; other requests are
// answered as Set says.
func (p *Peer) FailRevision(verb contract.Verb, user string, rev int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failRevisionTimes(verb, user, rev, -1)
}

// FailRevisionOnce is FailRevision for the first such request only.
func (p *Peer) FailRevisionOnce(verb contract.Verb, user string, rev int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failRevisionTimes(verb, user, rev, 1)
}

// failRevisionTimes makes verb refuse user's revision rev n more times
// (-1: always). The caller holds p.mu.
func (p *Peer) failRevisionTimes(verb contract.Verb, user string, rev int64, n int) {
	if p.failRevs[verb] == nil {
		p.failRevs[verb] = map[revOf]int{}
	}
	p.failRevs[verb][revOf{user, rev}] = n
}

// Applied is the desired-state revision of user's last apply this peer
// answered ok (0: none).
func (p *Peer) Applied(user string) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.applied[user]
}

// Release lets every hanging call answer and makes hanging verbs answer
// again.
func (p *Peer) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for v, b := range p.behaviour {
		if b == Hang {
			p.behaviour[v] = Answer
		}
	}
	close(p.gate)
	p.gate = make(chan struct{})
}

// Disappear closes the peer's connection at once, as if the process died:
// it stops answering and heartbeating without leaving the group.
func (p *Peer) Disappear() {
	p.mu.Lock()
	p.gone = true
	p.mu.Unlock()
	p.nc.Close()
}

func (p *Peer) stop() {
	p.mu.Lock()
	gone := p.gone
	p.gone = true
	close(p.gate)
	p.gate = make(chan struct{})
	p.mu.Unlock()
	if gone {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.grp.Leave(ctx)
	_ = p.svc.Shutdown(5 * time.Second)
}

// errFailing is the error of a peer told to fail.
var errFailing = errors.New("told to fail")

func (p *Peer) handler(verb contract.Verb) service.Handler {
	return func(ctx context.Context, req contract.SvcRequest) (any, error) {
		c := Call{Service: p.Svc, Instance: p.ID(), Verb: verb, User: req.User, CommandID: req.CommandID,
			State: req.State, Args: req.Args, At: time.Now()}
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			c.TraceID = sc.TraceID().String()
		}
		job := p.opts.Owner && p.Svc == contract.SvcFeed && verb == contract.VerbBackfill
		if !job {
			p.rec.add(c)
		}
		p.mu.Lock()
		b, gate := p.behaviour[verb], p.gate
		if req.State != nil {
			k := revOf{req.User, req.State.Revision}
			switch n := p.failRevs[verb][k]; {
			case n < 0:
				b = Fail
			case n > 0:
				b = Fail
				p.failRevs[verb][k] = n - 1
			}
		}
		p.mu.Unlock()
		switch {
		case b == Fail:
			return nil, fmt.Errorf("%s %s: %w", p.Svc, verb, errFailing)
		case job:
			return p.backfill(ctx, req, b == Hang, gate, func() { p.rec.add(c) })
		case verb == contract.VerbCancel:
			return p.cancelJob(req)
		case b == Hang:
			<-gate
		}
		if verb == contract.VerbApply && req.State != nil {
			p.mu.Lock()
			p.applied[req.User] = req.State.Revision
			p.mu.Unlock()
		}
		return p.answer(verb, req)
	}
}

// answer is what the real services answer (docs/design.md).
func (p *Peer) answer(verb contract.Verb, req contract.SvcRequest) (any, error) {
	if !p.opts.Owner {
		if verb == contract.VerbPause && p.Svc == contract.SvcFeed {
			p.cancelBackfills(req.User)
		}
		return contract.OwnerReply{}, nil
	}
	switch {
	case p.Svc == contract.SvcFeed && verb == contract.VerbPause:
		p.cancelBackfills(req.User)
	case p.Svc == contract.SvcFeed && verb == contract.VerbResume:
		var symbols []string
		if req.State != nil {
			symbols = req.State.Symbols
		}
		return contract.FeedResumeResult{OwnerReply: contract.OwnerReply{Owner: true}, Symbols: symbols, GapFilled: p.opts.GapFilled}, nil
	case p.Svc == contract.SvcIndicators && verb == contract.VerbRecompute:
		return contract.IndicatorsRecomputeResult{OwnerReply: contract.OwnerReply{Owner: true}, Bars: 42}, nil
	case verb == contract.VerbPlan:
		return p.plan(req)
	}
	return contract.OwnerReply{Owner: true}, nil
}

// plan answers a plan request: the verb it plans, and for feed.backfill
// two pages at 10 requests a second.
func (p *Peer) plan(req contract.SvcRequest) (any, error) {
	args, err := contract.DecodePeer[contract.PlanArgs](req.Args)
	if err != nil {
		return nil, err
	}
	if p.Svc == contract.SvcFeed && args.Verb == contract.VerbBackfill {
		return contract.FeedBackfillPlan{OwnerReply: contract.OwnerReply{Owner: true}, Pages: 2, Requests: 2, RatePerSecond: 10, EstimatedSeconds: 0.2}, nil
	}
	return planOf{OwnerReply: contract.OwnerReply{Owner: true}, Verb: args.Verb}, nil
}

// planOf is a peer's plan of any other verb: the verb it plans.
type planOf struct {
	contract.OwnerReply
	Verb contract.Verb `json:"plan_of"`
}

// backfill publishes page progress, then (after the gate opens when it
// hangs) answers the bars of the range; a feed.pause of the user cancels
// it. The call is recorded (record) once its job can be cancelled and its
// pages are published, so a test that waits for the call may cancel it.
func (p *Peer) backfill(ctx context.Context, req contract.SvcRequest, hang bool, gate <-chan struct{}, record func()) (any, error) {
	record = sync.OnceFunc(record)
	defer record()
	args, err := contract.DecodePeer[contract.BackfillArgs](req.Args)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	job := &peerJob{cancel: cancel, done: make(chan struct{}), tf: args.Timeframes[0]}
	defer close(job.done)
	p.mu.Lock()
	p.backfills[req.User] = append(p.backfills[req.User], cancel)
	p.jobs[req.CommandID] = job
	p.mu.Unlock()
	defer func() {
		// A job that was stopped (a pause, a cancel) stays known, as the
		// feed keeps it, so that the command's cancel, which may come
		// after the pause stopped it, reports how far it got.
		if ctx.Err() == nil {
			p.mu.Lock()
			delete(p.jobs, req.CommandID)
			p.mu.Unlock()
		}
	}()
	for page := 1; page <= p.opts.BackfillPages; page++ {
		ev := contract.Progress{ID: req.CommandID, Done: page, Total: p.opts.BackfillPages, Unit: "pages", Message: string(args.Timeframes[0])}
		b, _ := json.Marshal(ev)
		if err := p.nc.Publish(args.ProgressSubject, b); err != nil {
			return nil, err
		}
	}
	record()
	if hang {
		select {
		case <-gate:
		case <-ctx.Done():
		}
	}
	if ctx.Err() != nil {
		return nil, &contract.Error{Code: contract.CodeConflict, Message: "backfill cancelled by pause"}
	}
	candles := map[contract.Timeframe]int{}
	for _, tf := range args.Timeframes {
		candles[tf] = int(args.To.Sub(args.From) / tf.Duration())
	}
	return contract.FeedBackfillResult{OwnerReply: contract.OwnerReply{Owner: true}, Symbol: args.Symbol, Candles: candles}, nil
}

func (p *Peer) cancelBackfills(user string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, cancel := range p.backfills[user] {
		cancel()
	}
	delete(p.backfills, user)
}

// peerJob is a running stand-in backfill.
type peerJob struct {
	cancel context.CancelFunc
	done   chan struct{}
	tf     contract.Timeframe
}

// cancelJob stops the backfill of the command in args (as the real feed
// does after the page in flight) and answers how far it got: every page
// it reported, of one more, 300 candles each.
func (p *Peer) cancelJob(req contract.SvcRequest) (any, error) {
	args, err := contract.DecodePeer[contract.CancelArgs](req.Args)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	job := p.jobs[args.CommandID]
	p.mu.Unlock()
	stopped := []contract.JobProgress{}
	if job != nil {
		job.cancel()
		<-job.done
		n := p.opts.BackfillPages
		stopped = append(stopped, contract.JobProgress{Pages: n, Total: n + 1, Candles: map[contract.Timeframe]int{job.tf: 300 * n}})
	}
	return contract.FeedCancelResult{OwnerReply: contract.OwnerReply{Owner: p.opts.Owner}, Stopped: stopped}, nil
}
