// Package intake answers the operator's requests on
// vigil.cmd.<user>.<command>: it validates the subject, the reply subject
// (with tenant inboxes on, only the requester's own inbox prefix is
// answered), the payload and the user first, records the command durably
// (ledger, one compare-and-set in JetStream) and only then replies with the
// ACK, and finally kicks the local executor. Rejected requests get an ACK
// with accepted:false plus the micro service error headers, and nothing is
// recorded; a request whose reply subject is another's inbox gets no
// answer at all.
package intake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/oklog/ulid/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/telemetry"
	"vigil.dev/services/control/internal/directory"
	"vigil.dev/services/control/internal/ledger"
)

// Request headers read by the intake.
const (
	// MsgIDHeader makes a request idempotent (as in JetStream).
	MsgIDHeader = "Nats-Msg-Id"
	// OperatorHeader is a display name the client chose (vigilctl
	// --operator); it is recorded apart from the authenticated identity
	// (Entry.OperatorName) and never trusted.
	OperatorHeader = "Vigil-Operator"
	// RequestInfoHeader is set by nats-server on requests that cross
	// accounts through a service import, replacing any the client set;
	// its "acc" and "user" name who the server authenticated.
	RequestInfoHeader = "Nats-Request-Info"
)

// requestTimeout bounds the work of answering one request.
const requestTimeout = 10 * time.Second

// maxOperatorLen bounds the recorded operator name.
const maxOperatorLen = 128

// Recorder stores accepted commands (ledger.Ledger).
type Recorder interface {
	Record(ctx context.Context, e ledger.Entry, queueLimit int) (contract.Ack, bool, error)
}

// Users resolves user tokens (directory.Directory).
type Users interface {
	Lookup(ctx context.Context, token string) (directory.User, error)
}

// Notifier wakes a user's executor.
type Notifier interface {
	Notify(user string)
}

// Config tunes the intake.
type Config struct {
	Limits contract.Limits
	// QueueLimit bounds a user's queued commands.
	QueueLimit int
	// TenantInboxes answers a command of user u only when its reply
	// subject starts with TenantInboxPrefix(u) or one of OperatorInboxes.
	TenantInboxes bool
	// OperatorInboxes are the inbox prefixes (ending in ".") of operators
	// that may command every user, e.g. "_INBOX." or "_INBOX_admin.".
	OperatorInboxes []string
	// CommandsPerMinute bounds each user's commands (pause and cancel
	// excepted) taken by this instance; 0 is no limit.
	CommandsPerMinute int
	// Now is the clock of the rate limit [time.Now].
	Now func() time.Time
}

// TenantInboxPrefix is the inbox prefix of user's own operator:
// _INBOX_<user>. (nats --inbox-prefix _INBOX_<user>).
func TenantInboxPrefix(user string) string { return "_INBOX_" + user + "." }

// errForeignInbox reports a reply subject outside the requester's inbox.
var errForeignInbox = errors.New("reply subject is outside the requester's inbox prefix")

// replyAllowed reports whether a command of user may be answered on reply.
func (c Config) replyAllowed(user, reply string) bool {
	if !c.TenantInboxes || strings.HasPrefix(reply, ImportReplyPrefix) {
		return true
	}
	if strings.HasPrefix(reply, TenantInboxPrefix(user)) {
		return true
	}
	for _, p := range c.OperatorInboxes {
		if p != "" && strings.HasPrefix(reply, p) {
			return true
		}
	}
	return false
}

// Intake is the handler of vigil.cmd.*.*.
type Intake struct {
	cfg      Config
	rec      Recorder
	users    Users
	notify   Notifier
	log      *slog.Logger
	tracer   trace.Tracer
	rejected metric.Int64Counter
	rates    *rateLimits
	// exceeded counts requests refused by a per-tenant limit, by limit.
	exceeded metric.Int64Counter
}

// New returns the intake.
func New(cfg Config, rec Recorder, users Users, notify Notifier, log *slog.Logger) (*Intake, error) {
	rejected, err := otel.Meter("vigil.dev/services/control").Int64Counter("vigil.control.commands.rejected",
		metric.WithDescription("commands rejected before they were queued, by error code"))
	if err != nil {
		return nil, fmt.Errorf("intake: metric: %w", err)
	}
	exceeded, err := otel.Meter("vigil.dev/services/control").Int64Counter("vigil.control.limit.exceeded",
		metric.WithDescription("commands refused by a per-tenant limit, by limit (commands_per_minute)"))
	if err != nil {
		return nil, fmt.Errorf("intake: metric: %w", err)
	}
	return &Intake{cfg: cfg, rec: rec, users: users, notify: notify, log: log,
		tracer: otel.Tracer("vigil.dev/services/control/intake"), rejected: rejected,
		rates: newRateLimits(cfg.CommandsPerMinute, cfg.Now), exceeded: exceeded}, nil
}

// Handle implements micro.Handler. Requests are answered one at a time
// per instance, in arrival order, so micro's statistics (processing time,
// errors) are right; the work is a cached lookup and one short
// transaction, and the queue group spreads requests over the instances.
func (in *Intake) Handle(r micro.Request) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	ctx = telemetry.Extract(ctx, nats.Header(r.Headers()))
	ctx, span := in.tracer.Start(ctx, "vigil.cmd accept", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("messaging.destination.name", r.Subject())))
	defer span.End()
	span.SetAttributes(attribute.String("vigil.operator", Identity(r.Headers(), r.Reply())),
		attribute.String("vigil.operator_name", displayName(r.Headers())))
	if user, _, err := contract.ParseCommandSubject(r.Subject()); err == nil && !in.cfg.replyAllowed(user, r.Reply()) {
		span.SetStatus(codes.Error, errForeignInbox.Error())
		in.rejected.Add(ctx, 1, metric.WithAttributes(attribute.String("code", string(contract.CodeForbidden))))
		in.log.WarnContext(ctx, "command ignored: "+errForeignInbox.Error(), "subject", r.Subject(), "reply", r.Reply())
		return
	}
	ack, err := in.accept(ctx, r)
	span.SetAttributes(attribute.String("vigil.command_id", ack.ID), attribute.String("vigil.user", ack.User),
		attribute.String("vigil.command", string(ack.Command)), attribute.Bool("vigil.accepted", ack.Accepted))
	if err != nil {
		ack.Accepted, ack.Position = false, 0
		ack.Error = contract.ErrorOf(err)
		span.SetStatus(codes.Error, err.Error())
		in.rejected.Add(ctx, 1, metric.WithAttributes(attribute.String("code", string(ack.Error.Code))))
		in.log.InfoContext(ctx, "command rejected", "subject", r.Subject(), "id", ack.ID, "code", ack.Error.Code, "err", ack.Error.Message)
		body, _ := json.Marshal(ack)
		if err := r.Error(ack.Error.Code.ServiceCode(), headerText(string(ack.Error.Code)+": "+ack.Error.Message), body); err != nil {
			in.log.WarnContext(ctx, "reply failed", "subject", r.Subject(), "err", err)
		}
		return
	}
	if err := r.RespondJSON(ack); err != nil {
		in.log.WarnContext(ctx, "reply failed; the command is recorded and runs", "id", ack.ID, "err", err)
	}
	in.notify.Notify(ack.User)
}

// accept validates and records the request; the ACK carries what is known
// even when err is set.
func (in *Intake) accept(ctx context.Context, r micro.Request) (contract.Ack, error) {
	var ack contract.Ack
	if parts := strings.Split(r.Subject(), "."); len(parts) == 4 {
		ack.User, ack.Command = parts[2], contract.Command(parts[3])
	}
	user, cmd, err := contract.ParseCommandSubject(r.Subject())
	if err != nil {
		return ack, err
	}
	headerID := r.Headers().Get(MsgIDHeader)
	if headerID != "" {
		ack.ID = headerID
		if err := contract.ValidateCommandID(headerID); err != nil {
			fe := contract.FieldError{Field: MsgIDHeader, Problem: err.Error()}
			errors.As(err, &fe)
			fe.Field = MsgIDHeader
			return ack, fe
		}
	}
	payload, err := contract.DecodePayload(cmd, r.Data(), in.cfg.Limits)
	if err != nil {
		return ack, err
	}
	if p, ok := payload.(contract.ForceBackfillPayload); ok {
		if err := checkOpenRange(p, time.Now()); err != nil {
			return ack, err
		}
	}
	switch pid := payload.CommandID(); {
	case headerID != "" && pid != "" && pid != headerID:
		return ack, contract.FieldError{Field: "id", Problem: fmt.Sprintf("%q differs from the %s header %q", pid, MsgIDHeader, headerID)}
	case headerID == "" && pid != "":
		ack.ID = pid
	case headerID == "":
		ack.ID = ulid.Make().String()
	}
	chosen := headerID != "" || payload.CommandID() != ""
	u, err := in.users.Lookup(ctx, user)
	if err != nil {
		return ack, err
	}
	if p, ok := payload.(contract.ClearCachePayload); ok && p.Exchange != 0 && !u.HasExchange(p.Exchange) {
		return ack, contract.NotYourExchange(p.Exchange, user)
	}
	if !exemptFromRate(cmd) {
		if err := in.rates.allow(user); err != nil {
			in.exceeded.Add(ctx, 1, metric.WithAttributes(attribute.String("limit", CommandsPerMinuteLimit)))
			return ack, err
		}
	}
	stored, err := json.Marshal(payload)
	if err != nil {
		return ack, fmt.Errorf("encode payload: %w", err)
	}
	carrier := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, carrier)
	digest, err := payloadDigest(cmd, stored, payload.CommandID() != "")
	if err != nil {
		return ack, err
	}
	first, duplicate, err := in.rec.Record(ctx, ledger.Entry{
		ID: ack.ID, Chosen: chosen, User: user, UserID: u.ID, Command: cmd, Payload: stored,
		Operator: Identity(r.Headers(), r.Reply()), OperatorName: displayName(r.Headers()),
		Priority: cmd.Priority(), Digest: digest, TraceParent: carrier.Get("traceparent"), TraceID: telemetry.TraceID(ctx),
	}, in.cfg.QueueLimit)
	if err != nil {
		return ack, err
	}
	if duplicate {
		in.log.InfoContext(ctx, "duplicate command id: first ACK returned", "id", ack.ID, "user", user)
	} else {
		in.log.InfoContext(ctx, "command accepted", "id", ack.ID, "user", user, "command", cmd, "position", first.Position)
	}
	return first, nil
}

// payloadDigest is the digest of a decoded payload without the command's
// own id (ownID: the id may come in the payload or in the header); a
// cancel's id names its target and stays in.
func payloadDigest(cmd contract.Command, stored []byte, ownID bool) (string, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(stored, &fields); err != nil {
		return "", fmt.Errorf("digest of the payload: %w", err)
	}
	if ownID {
		delete(fields, "id")
	}
	canonical, err := json.Marshal(fields)
	if err != nil {
		return "", fmt.Errorf("digest of the payload: %w", err)
	}
	return ledger.PayloadDigest(cmd, canonical), nil
}

// headerText makes s safe as a header value: one line, bounded.
func headerText(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > 512 {
		s = strings.ToValidUTF8(s[:512], "")
	}
	return s
}

// checkOpenRange bounds a force-backfill range given by from alone (to is
// then now), which the payload's own validation cannot see.
func checkOpenRange(p contract.ForceBackfillPayload, now time.Time) error {
	from, to := p.Range()
	if from.IsZero() || !to.IsZero() {
		return nil
	}
	if !from.Before(now) {
		return contract.FieldError{Field: "from", Problem: "must be in the past"}
	}
	for _, tf := range p.BackfillTimeframes() {
		if bars := now.Sub(from) / tf.Duration(); bars > contract.MaxBackfillBars {
			return contract.FieldError{Field: "from", Problem: fmt.Sprintf("range is %d bars of %s, the limit is %d", bars, tf, contract.MaxBackfillBars)}
		}
	}
	return nil
}
