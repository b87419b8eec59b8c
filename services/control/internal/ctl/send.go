package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/oklog/ulid/v2"
	"vigil.dev/pkg/contract"
)

// Request headers vigilctl sets (the contract's and vigil-control's).
const (
	msgIDHeader    = "Nats-Msg-Id"
	operatorHeader = "Vigil-Operator"
	// serviceErrorHeader is the micro service error header of a rejection.
	serviceErrorHeader = "Nats-Service-Error"
)

// maxAckWait bounds the wait for the ACK (vigil-control answers within
// 10 s or not at all).
const maxAckWait = 15 * time.Second

// RejectedError is a command that vigil-control did not accept.
type RejectedError struct{ Ack contract.Ack }

// Error names the command, the user and the reason.
func (e *RejectedError) Error() string {
	msg := fmt.Sprintf("%s for %s rejected", e.Ack.Command, e.Ack.User)
	if e.Ack.Error != nil {
		msg += ": " + e.Ack.Error.Error()
	}
	return msg
}

// Unwrap makes errors.Is(err, ErrRejected) true.
func (e *RejectedError) Unwrap() error { return ErrRejected }

// FailedError is a command whose result is failed or cancelled.
type FailedError struct{ Result contract.Result }

// Error names the command, the user, the status and the reason.
func (e *FailedError) Error() string {
	msg := fmt.Sprintf("%s for %s %s", e.Result.Command, e.Result.User, e.Result.Status)
	if e.Result.Error != nil {
		msg += ": " + e.Result.Error.Error()
	}
	return msg
}

// Unwrap makes errors.Is(err, ErrFailed) true.
func (e *FailedError) Unwrap() error { return ErrFailed }

// sender sends one command and follows it.
type sender struct {
	sys  IO
	nc   *nats.Conn
	opts commandOptions
}

// send sends cmd with body for s.opts.user, prints the ACK and, unless
// --no-wait, waits for the result while drawing progress. The result and
// progress subjects are subscribed before the request goes out, so nothing
// is missed; a result published before that (a repeated --id) is read from
// the stream.
func (s sender) send(parent context.Context, cmd contract.Command, body []byte) error {
	ctx, cancel := context.WithTimeout(parent, s.opts.timeout)
	defer cancel()
	user := s.opts.user
	id := s.opts.id
	if id == "" {
		id = ulid.Make().String()
	}
	out := printer{stdout: s.sys.Stdout, json: s.opts.json}

	updates := make(chan *nats.Msg, 1024)
	var subs []*nats.Subscription
	defer func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
	}()
	follow := func(id string) error {
		for _, subject := range []string{contract.ResultSubject(user, id), contract.ProgressSubject(user, id)} {
			sub, err := s.nc.ChanSubscribe(subject, updates)
			if err != nil {
				return fmt.Errorf("subscribe %s: %w", subject, err)
			}
			subs = append(subs, sub)
		}
		return s.nc.FlushWithContext(ctx)
	}
	if !s.opts.noWait {
		if err := follow(id); err != nil {
			return err
		}
	}

	ack, raw, err := s.request(ctx, cmd, id, body)
	if err != nil {
		return err
	}
	out.ack(ack, raw, s.opts.noWait)
	if !ack.Accepted {
		return &RejectedError{Ack: ack}
	}
	if s.opts.noWait {
		return nil
	}
	if ack.ID != id {
		id = ack.ID
		if err := follow(id); err != nil {
			return err
		}
	}
	resultSubject := contract.ResultSubject(user, id)
	bar := newProgressView(s.sys)
	defer bar.finish()
	if data, ok := publishedResult(ctx, s.nc, resultSubject); ok {
		return s.finish(out, bar, data)
	}
	for {
		select {
		case <-ctx.Done():
			bar.finish()
			if parent.Err() != nil {
				return fmt.Errorf("stopped waiting; %s %s for %s goes on, its result will be on %s%s", cmd, id, user, resultSubject, cancelHint(cmd, user, id))
			}
			return fmt.Errorf("%w: %s %s for %s has no result after %s; follow it with: nats sub --stream %s --all %s",
				ErrNoResult, cmd, id, user, s.opts.timeout, contract.StreamResults, resultSubject)
		case m := <-updates:
			if m.Subject == resultSubject {
				return s.finish(out, bar, m.Data)
			}
			var p contract.Progress
			if err := json.Unmarshal(m.Data, &p); err != nil {
				continue // not a progress event; the result is what counts
			}
			bar.update(p)
		}
	}
}

// cancelHint offers, when the operator stops waiting on a background job
// (Ctrl-C), the command that cancels it.
func cancelHint(cmd contract.Command, user, id string) string {
	if cmd != contract.CmdForceBackfill {
		return ""
	}
	return fmt.Sprintf("; to cancel it: vigilctl cancel --user %s --id %s", user, id)
}

// request sends the command and decodes the ACK.
func (s sender) request(ctx context.Context, cmd contract.Command, id string, body []byte) (contract.Ack, []byte, error) {
	subject := contract.CommandSubject(s.opts.user, cmd)
	msg := nats.NewMsg(subject)
	msg.Data = body
	msg.Header.Set(msgIDHeader, id)
	if s.opts.operator != "" {
		msg.Header.Set(operatorHeader, s.opts.operator)
	}
	ackCtx, cancel := context.WithTimeout(ctx, min(maxAckWait, s.opts.timeout))
	defer cancel()
	resp, err := s.nc.RequestMsgWithContext(ackCtx, msg)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return contract.Ack{}, nil, fmt.Errorf("no vigil-control instance answers on %s (is vigil-control running?): %w", subject, err)
	case errors.Is(err, context.DeadlineExceeded):
		return contract.Ack{}, nil, fmt.Errorf("no ACK from vigil-control on %s within %s", subject, min(maxAckWait, s.opts.timeout))
	case err != nil:
		return contract.Ack{}, nil, fmt.Errorf("request %s: %w", subject, err)
	}
	var ack contract.Ack
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		if text := resp.Header.Get(serviceErrorHeader); text != "" {
			code, msg, _ := strings.Cut(text, ": ")
			ack = contract.Ack{ID: id, User: s.opts.user, Command: cmd,
				Error: &contract.Error{Code: contract.ErrorCode(code), Message: msg}}
			return ack, resp.Data, nil
		}
		return ack, resp.Data, fmt.Errorf("the reply on %s is not an ACK: %w: %q", subject, err, resp.Data)
	}
	return ack, resp.Data, nil
}

// finish prints the result in data and turns its status into the error.
func (s sender) finish(out printer, bar *progressView, data []byte) error {
	bar.finish()
	var r contract.Result
	if err := json.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("the result is not a command result: %w: %q", err, data)
	}
	out.result(r, data)
	if r.Status != contract.StatusSucceeded {
		return &FailedError{Result: r}
	}
	if s.opts.dryRun && !s.opts.json {
		var plan contract.DryRunResult
		if json.Unmarshal(r.Result, &plan) == nil && plan.Plan != "" {
			fmt.Fprintf(s.sys.Stdout, "plan %s: nothing was changed; run it with --plan-hash %s (it fails with conflict if its inputs changed)\n", plan.Plan, plan.Plan)
		}
	}
	return nil
}

// publishedWait bounds the look for a result already published.
const publishedWait = 3 * time.Second

// publishedResult reads a result that is already in VIGIL_RESULTS (the
// command ran before, under the same id) with a direct get by subject,
// $JS.API.DIRECT.GET.VIGIL_RESULTS.<subject>: the admin may call it, and a
// tenant's account imports it for its own result subjects (deploy/nats),
// so no stream info is needed. It reports false when there is none or the
// stream cannot be read, within publishedWait, so the wait for a live
// result goes on.
func publishedResult(ctx context.Context, nc *nats.Conn, subject string) ([]byte, bool) {
	ctx, cancel := context.WithTimeout(ctx, publishedWait)
	defer cancel()
	msg, err := nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET."+contract.StreamResults+"."+subject, nil)
	if err != nil || msg.Header.Get("Status") != "" || len(msg.Data) == 0 {
		return nil, false
	}
	return msg.Data, true
}
