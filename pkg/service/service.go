// Package service is the skeleton every vigil service runs on: a NATS micro
// service with name, version, description and metadata, a group of
// vigil.svc.<service>.<verb> control endpoints that every instance answers
// (queue group disabled), each traced from the caller's W3C context, and a
// graceful shutdown that stops the service, runs the service's own drains
// and drains the connection under a timeout.
//
// Every service starts the same way, in three functions of its wiring
// package (internal/<svc>):
//
//	main:  service.Main("vigil-<svc>", <svc>.Run)
//	Run:   config.Load (parse and validate the environment), then Serve
//	Serve: rt := service.Boot(...); return rt.Serve(ctx, start)
//
// Tests call Serve with a Config built in code; tests that must reach into
// the instance (to kill it like a crash) call Boot and Runtime.Launch
// with start themselves. Boot opens the runtime
// (logger, telemetry, NATS and the contract's streams, health); start is
// the service's own script, top to bottom:
//
//  1. open its resources (Runtime.OpenRedis, or Runtime.OnClose for what
//     it opens itself);
//  2. start the micro service (Runtime.Start), whose declared verbs wait
//     for their handlers;
//  3. start its parts in order (join the membership group, build the
//     core, follow the desired states with Service.FollowStates, consume,
//     give the verbs their handlers, background loops with Service.Go),
//     registering each part's stop with Service.OnShutdown right after
//     the part has started.
//
// Runtime.Serve then logs "running" and waits until the context ends
// (SIGINT or SIGTERM under Main). Shutdown takes one path in every
// service, within VIGIL_SHUTDOWN_TIMEOUT: the micro service stops
// answering, the parts stop in the reverse order of their start (the last
// started stops first; leaving the group, registered right after the
// join, comes after the parts that use it), the requests in flight
// finish, the connection drains, the resources close in reverse order and
// telemetry flushes. A start that fails half way shuts down the same way,
// stopping exactly what had started.
package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/telemetry"
)

// Version is the vigil release every binary reports.
const Version = "0.1.0"

// Config describes a service.
type Config struct {
	// Svc is the short name used in vigil.svc.<svc>.<verb> (feed, ...).
	// Control has none and leaves it empty.
	Svc contract.Svc
	// Name is the micro service name (vigil-feed, ...).
	Name        string
	Description string
	Instance    string
	// Verbs are the control verbs the service answers besides status.
	// Their endpoints exist from Start on, so an instance that $SRV.PING
	// finds never lets a verb go unanswered while it is still starting: a
	// request that arrives before Handle gave the verb its handler waits
	// for it, at most StartupWait.
	Verbs []contract.Verb
	// StartupWait bounds how long a request for a declared verb waits for
	// its handler before it is answered with code unavailable
	// (DefaultStartupWait when zero).
	StartupWait time.Duration
	// LaneLimit bounds how many requests of one verb for one user wait
	// while an earlier one runs (DefaultLaneLimit when zero); one more is
	// answered with code busy. Each user's requests of a verb run one at
	// a time, different users' and different verbs' concurrently.
	LaneLimit int
}

// DefaultStartupWait is Config.StartupWait when zero.
const DefaultStartupWait = 30 * time.Second

// pendingVerb is a declared verb whose handler is set once, by Handle.
type pendingVerb struct {
	ready   chan struct{}
	handler Handler
}

// Handler answers one control verb for this instance. The returned value is
// marshalled as the reply's result; an error becomes ok:false with the
// contract error code (contract.ErrorFrom).
type Handler func(ctx context.Context, req contract.SvcRequest) (any, error)

// Service is a running micro service with its control endpoints.
type Service struct {
	cfg    Config
	nc     *nats.Conn
	micro  micro.Service
	group  micro.Group
	log    *slog.Logger
	tracer trace.Tracer

	lanes *lanes

	mu       sync.Mutex
	drains   []func(context.Context) error
	declared map[contract.Verb]*pendingVerb
}

// StatusFunc answers vigil.svc.<svc>.status: the instance's state, for one
// user when user is not empty (the request's "user"), else for all.
type StatusFunc func(ctx context.Context, user string) any

// Start registers the micro service on nc. Its status endpoint answers with
// status on vigil.svc.<svc>.status; further verbs are added with Handle.
func Start(nc *nats.Conn, cfg Config, log *slog.Logger, status StatusFunc) (*Service, error) {
	if cfg.Name == "" || cfg.Description == "" {
		return nil, errors.New("service: name and description are required")
	}
	host, _ := os.Hostname()
	svc, err := micro.AddService(nc, micro.Config{
		Name:        cfg.Name,
		Version:     Version,
		Description: cfg.Description,
		Metadata: map[string]string{
			"host":     host,
			"instance": cfg.Instance,
			"revision": revision(),
			"pid":      fmt.Sprint(os.Getpid()),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("micro service %s: %w", cfg.Name, err)
	}
	s := &Service{cfg: cfg, nc: nc, micro: svc, log: log, tracer: otel.Tracer("vigil.dev/pkg/service"), lanes: newLanes(cfg.LaneLimit)}
	if cfg.Svc != "" {
		s.group = svc.AddGroup("vigil.svc."+string(cfg.Svc), micro.WithGroupQueueGroupDisabled())
		// Status is quick and answered on its subscription, in order.
		statusHandler := func(ctx context.Context, req contract.SvcRequest) (any, error) {
			return status(ctx, req.User), nil
		}
		if err := s.group.AddEndpoint(string(contract.VerbStatus), micro.HandlerFunc(func(r micro.Request) {
			req, err := decodeRequest(r)
			s.serve(contract.VerbStatus, statusHandler, r, req, err)
		}), micro.WithEndpointQueueGroupDisabled()); err != nil {
			return nil, err
		}
		s.declared = map[contract.Verb]*pendingVerb{}
		for _, verb := range cfg.Verbs {
			p := &pendingVerb{ready: make(chan struct{})}
			s.declared[verb] = p
			if err := s.group.AddEndpoint(string(verb), micro.HandlerFunc(func(r micro.Request) {
				s.dispatch(verb, r, func(req contract.SvcRequest, err error) { s.servePending(verb, p, r, req, err) })
			}), micro.WithEndpointQueueGroupDisabled()); err != nil {
				return nil, err
			}
		}
	}
	// Flush so that a $SRV.PING right after Start finds this instance.
	if err := nc.Flush(); err != nil {
		return nil, fmt.Errorf("micro service %s: flush: %w", cfg.Name, err)
	}
	return s, nil
}

// ID is this instance's micro service id, as $SRV.PING reports it.
func (s *Service) ID() string { return s.micro.Info().ID }

// Micro is the underlying micro service, for endpoints outside vigil.svc.
func (s *Service) Micro() micro.Service { return s.micro }

// Handle answers vigil.svc.<svc>.<verb> with h on every instance: a verb
// of Config.Verbs gets its handler (requests that waited for it are served
// now), any other verb is added as a new endpoint. The request body is a
// contract.SvcRequest; the reply a contract.SvcReply.
func (s *Service) Handle(verb contract.Verb, h Handler) error {
	if s.group == nil {
		return fmt.Errorf("service %s has no vigil.svc group", s.cfg.Name)
	}
	if p, ok := s.declared[verb]; ok {
		s.mu.Lock()
		defer s.mu.Unlock()
		if p.handler != nil {
			return fmt.Errorf("service %s: verb %s has a handler already", s.cfg.Name, verb)
		}
		p.handler = h
		close(p.ready)
		return nil
	}
	return s.group.AddEndpoint(string(verb), micro.HandlerFunc(func(r micro.Request) {
		s.dispatch(verb, r, func(req contract.SvcRequest, err error) { s.serve(verb, h, r, req, err) })
	}), micro.WithEndpointQueueGroupDisabled())
}

// dispatch decodes request r and hands it to serve on the lane of its
// verb and user (see lanes), so that the subscription's goroutine is free
// for the next request at once. A request that does not decode is
// answered on the lane of the empty user; one that finds its lane full is
// answered busy at once.
func (s *Service) dispatch(verb contract.Verb, r micro.Request, serve func(contract.SvcRequest, error)) {
	req, err := decodeRequest(r)
	user := req.User
	if err != nil {
		user = ""
	}
	if s.lanes.run(laneKey{verb: string(verb), user: user}, func() { serve(req, err) }) {
		return
	}
	s.serve(verb, func(context.Context, contract.SvcRequest) (any, error) {
		return nil, &contract.Error{Code: contract.CodeBusy,
			Message: fmt.Sprintf("%s: more than %d %s requests of %q wait already", s.cfg.Instance, s.lanes.limit, verb, user)}
	}, r, req, err)
}

// decodeRequest decodes the SvcRequest of r and checks its user token.
func decodeRequest(r micro.Request) (contract.SvcRequest, error) {
	req, err := contract.DecodePeer[contract.SvcRequest](orEmptyObject(r.Data()))
	if err == nil && req.User != "" {
		err = contract.ValidateUserToken(req.User)
	}
	return req, err
}

// servePending serves a declared verb once its handler is set, or answers
// unavailable when the instance is still starting after the startup wait.
func (s *Service) servePending(verb contract.Verb, p *pendingVerb, r micro.Request, req contract.SvcRequest, reqErr error) {
	wait := s.cfg.StartupWait
	if wait <= 0 {
		wait = DefaultStartupWait
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-p.ready:
		s.serve(verb, p.handler, r, req, reqErr)
	case <-timer.C:
		s.serve(verb, func(context.Context, contract.SvcRequest) (any, error) {
			return nil, &contract.Error{Code: contract.CodeUnavailable,
				Message: fmt.Sprintf("%s is still starting: no %s handler after %s", s.cfg.Instance, verb, wait)}
		}, r, req, reqErr)
	}
}

// serve answers request r, decoded as req (or failed to decode with err),
// with h.
func (s *Service) serve(verb contract.Verb, h Handler, r micro.Request, req contract.SvcRequest, err error) {
	ctx := telemetry.Extract(context.Background(), nats.Header(r.Headers()))
	ctx, span := s.tracer.Start(ctx, s.cfg.Name+" "+string(verb), trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("vigil.instance", s.cfg.Instance), attribute.String("messaging.destination.name", r.Subject())))
	defer span.End()
	reply := contract.SvcReply{Service: s.cfg.Name, Instance: s.ID(), OK: true}
	var result any
	if err == nil {
		span.SetAttributes(attribute.String("vigil.user", req.User), attribute.String("vigil.command_id", req.CommandID))
		result, err = h(ctx, req)
	}
	if err != nil {
		reply.OK = false
		reply.Error = contract.ErrorFrom(err, contract.CodeInternal)
		span.SetStatus(codes.Error, err.Error())
		s.log.WarnContext(ctx, "control verb failed", "verb", verb, "user", req.User, "err", err)
	} else if result != nil {
		if reply.Result, err = json.Marshal(result); err != nil {
			reply.OK = false
			reply.Error = &contract.Error{Code: contract.CodeInternal, Message: err.Error()}
		}
	}
	if err := r.RespondJSON(reply); err != nil {
		s.log.ErrorContext(ctx, "reply failed", "verb", verb, "err", err)
	}
}

func orEmptyObject(b []byte) []byte {
	if len(b) == 0 {
		return []byte("{}")
	}
	return b
}

// OnShutdown registers f to run during Shutdown after the micro service has
// stopped and before the connection drains (e.g. stop consumers, flush).
// Register each part's stop right after the part has started: Shutdown
// stops the parts in the reverse order, and a start that fails half way
// stops exactly what had started.
func (s *Service) OnShutdown(f func(context.Context) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drains = append(s.drains, f)
}

// Go runs part on a goroutine of its own until Shutdown: at part's place
// in the reverse order, Shutdown ends part's context and waits for part to
// return (part returns promptly once its context ends); part's error is
// one of Shutdown's.
func (s *Service) Go(part func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- part(ctx) }()
	s.OnShutdown(func(context.Context) error {
		cancel()
		return <-done
	})
}

// minStopStep is the least time a shutdown step gets once the budget is
// spent, so that leaving the membership group and draining the connection
// are still attempted after a slow step.
const minStopStep = time.Second

// Shutdown stops the micro service, runs the OnShutdown functions in
// reverse order, waits for the requests still being served (their replies
// go out before the connection closes) and drains the connection, all
// within timeout (one budget; a step that starts when it is spent still
// gets a second).
func (s *Service) Shutdown(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	errs := []error{s.micro.Stop()}
	s.mu.Lock()
	drains := s.drains
	s.mu.Unlock()
	for i := len(drains) - 1; i >= 0; i-- {
		errs = append(errs, step(deadline, drains[i]))
	}
	errs = append(errs, step(deadline, func(ctx context.Context) error {
		if err := s.lanes.wait(ctx); err != nil {
			return fmt.Errorf("requests still served: %w", err)
		}
		return nil
	}))
	errs = append(errs, step(deadline, func(ctx context.Context) error { return natsx.Drain(ctx, s.nc) }))
	return errors.Join(errs...)
}

// step runs f with a context that ends at deadline, or minStopStep from
// now when that is later.
func step(deadline time.Time, f func(context.Context) error) error {
	if least := time.Now().Add(minStopStep); deadline.Before(least) {
		deadline = least
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	return f(ctx)
}

// Revision is the source revision, set at build time with
// -ldflags "-X vigil.dev/pkg/service.Revision=<git sha>".
var Revision string

// revision is Revision, else the VCS revision in the build info, else
// "unknown".
func revision() string {
	if Revision != "" {
		return Revision
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			return s.Value
		}
	}
	return "unknown"
}
