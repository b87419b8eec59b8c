package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"vigil.dev/pkg/contract"
)

// DefaultAlertsLast is how many past alerts alerts shows by default.
const DefaultAlertsLast = 10

// consumerIdle is how long an abandoned ordered consumer lingers on the
// server.
const consumerIdle = 30 * time.Second

func newAlertsCmd(sys IO, conn *connFlags) *cobra.Command {
	var user string
	var last int
	var follow, asJSON, webhooks bool
	cmd := &cobra.Command{
		Use:   "alerts",
		Short: "Show the last alerts of the VIGIL_ALERTS stream, and follow new ones with --follow; --webhooks shows the webhook deliveries",
		Example: `  vigilctl alerts --user demo
  vigilctl alerts --user demo --follow
  vigilctl alerts --last 0 --follow --json
  vigilctl alerts --webhooks`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter := contract.AlertSubjects
			if user != "" {
				if err := contract.ValidateUserToken(user); err != nil {
					return flagError("user", err)
				}
				filter = contract.AlertSubject(user, ">")
			}
			if last < 0 {
				return usageErrorf("--last: must not be negative")
			}
			nc, err := conn.connect(cmd.Context(), sys.Getenv)
			if err != nil {
				return err
			}
			defer nc.Close()
			if webhooks {
				return showWebhooks(cmd.Context(), nc, user, asJSON, sys.Stdout)
			}
			out := alertPrinter{w: sys.Stdout, json: asJSON}
			shown := 0
			err = streamAlerts(cmd.Context(), nc, filter, last, follow, func(m jetstream.Msg) {
				shown++
				out.print(m)
			})
			if errors.Is(err, context.Canceled) && follow {
				return nil // Ctrl-C ends --follow
			}
			if err == nil && shown == 0 && !follow && !asJSON {
				fmt.Fprintf(sys.Stdout, "no alerts on %s\n", filter)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&user, "user", "u", "", "only this user's alerts (default every user's)")
	f.IntVarP(&last, "last", "n", DefaultAlertsLast, "how many past alerts to show first")
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new alerts until interrupted")
	f.BoolVar(&asJSON, "json", false, "print each alert's JSON as published")
	f.BoolVar(&webhooks, "webhooks", false, "show each user's webhook delivery (backlog, failing since, last error) as the vigil-alerts instances report it")
	return cmd
}

// streamAlerts calls show with the last alerts on filter, oldest first,
// and with follow every new one until ctx ends. It reads VIGIL_ALERTS with
// an ordered consumer that starts late enough to hold the last alerts: the
// start is moved back until the consumer has last pending alerts or starts
// at the stream's first message.
func streamAlerts(ctx context.Context, nc *nats.Conn, filter string, last int, follow bool, show func(jetstream.Msg)) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	stream, err := js.Stream(ctx, contract.StreamAlerts)
	if err != nil {
		return fmt.Errorf("stream %s: %w", contract.StreamAlerts, err)
	}
	state := stream.CachedInfo().State
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}, InactiveThreshold: consumerIdle}
	var cons jetstream.Consumer
	skip := uint64(0)
	switch {
	case last == 0 || state.Msgs == 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, state.LastSeq+1
		if cons, err = js.OrderedConsumer(ctx, contract.StreamAlerts, cfg); err != nil {
			return fmt.Errorf("read %s: %w", contract.StreamAlerts, err)
		}
	default:
		for window := uint64(last); ; window *= 4 {
			start := state.FirstSeq
			if state.LastSeq >= window && state.LastSeq-window+1 > start {
				start = state.LastSeq - window + 1
			}
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
			if cons, err = js.OrderedConsumer(ctx, contract.StreamAlerts, cfg); err != nil {
				return fmt.Errorf("read %s: %w", contract.StreamAlerts, err)
			}
			pending := cons.CachedInfo().NumPending
			if pending >= uint64(last) || start == state.FirstSeq {
				skip = pending - min(pending, uint64(last))
				break
			}
			deleteConsumer(ctx, stream, cons)
		}
	}
	defer deleteConsumer(context.WithoutCancel(ctx), stream, cons)
	backlog := cons.CachedInfo().NumPending
	if !follow && backlog == 0 {
		return nil
	}
	msgs, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("read %s: %w", contract.StreamAlerts, err)
	}
	defer msgs.Stop()
	stop := context.AfterFunc(ctx, msgs.Stop)
	defer stop()
	for seen := uint64(0); follow || seen < backlog; seen++ {
		msg, err := msgs.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read %s: %w", contract.StreamAlerts, err)
		}
		if seen >= skip {
			show(msg)
		}
	}
	return nil
}

// deleteConsumer removes an ordered consumer at once instead of waiting
// for its inactivity threshold.
func deleteConsumer(ctx context.Context, stream jetstream.Stream, cons jetstream.Consumer) {
	if info := cons.CachedInfo(); info != nil {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_ = stream.DeleteConsumer(ctx, info.Name)
	}
}

// alertPrinter prints alerts, one line each.
type alertPrinter struct {
	w    io.Writer
	json bool
}

// print writes "2026-11-26T15:55:44Z  demo  btc-rsi  BTC-USD 1h  threshold
// value=71.3  message".
func (p alertPrinter) print(msg jetstream.Msg) {
	if p.json {
		printer{stdout: p.w, json: true}.raw(msg.Data())
		return
	}
	var a contract.Alert
	if err := json.Unmarshal(msg.Data(), &a); err != nil {
		fmt.Fprintf(p.w, "%s: not an alert: %s\n", msg.Subject(), compactJSON(msg.Data()))
		return
	}
	fmt.Fprintf(p.w, "%s  %s  %s  %s %s  %s  value=%g  %s\n", a.FiredAt.UTC().Format(time.RFC3339), a.User, a.RuleID,
		a.Symbol, a.Timeframe, a.Kind, a.Value, a.Message)
}

// WebhookStatus is one user's webhook delivery as the vigil-alerts
// instance running it reports it (status verb, "webhooks").
type WebhookStatus struct {
	User     string `json:"user"`
	Instance string `json:"instance"`
	contract.WebhookStatus
}

// webhooksWait is how long --webhooks waits for the instances' answers.
const webhooksWait = 2 * time.Second

// collectWebhooks asks every vigil-alerts instance for its webhook
// deliveries and returns those of user (every user when empty), by user.
func collectWebhooks(ctx context.Context, nc *nats.Conn, user string) ([]WebhookStatus, error) {
	body, _ := json.Marshal(contract.SvcRequest{User: user})
	msgs := gather(ctx, nc, contract.SvcSubject(contract.SvcAlerts, contract.VerbStatus), body, webhooksWait)
	if len(msgs) == 0 {
		return nil, fmt.Errorf("no %s instance answered", contract.ServiceAlerts)
	}
	var out []WebhookStatus
	for _, m := range msgs {
		var reply contract.SvcReply
		var result contract.AlertsStatus
		if json.Unmarshal(m.Data, &reply) != nil || json.Unmarshal(reply.Result, &result) != nil {
			continue
		}
		for u, s := range result.Webhooks {
			if user == "" || u == user {
				out = append(out, WebhookStatus{User: u, Instance: reply.Instance, WebhookStatus: s})
			}
		}
	}
	slices.SortFunc(out, func(a, b WebhookStatus) int { return strings.Compare(a.User, b.User) })
	return out, nil
}

// showWebhooks prints the webhook deliveries, one line per user.
func showWebhooks(ctx context.Context, nc *nats.Conn, user string, asJSON bool, w io.Writer) error {
	hooks, err := collectWebhooks(ctx, nc, user)
	if err != nil {
		return err
	}
	if asJSON {
		doc, _ := json.Marshal(hooks)
		fmt.Fprintln(w, string(doc))
		return nil
	}
	if len(hooks) == 0 {
		fmt.Fprintln(w, "no webhook deliveries running")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "USER\tHOST\tPENDING\tDELIVERED\tGIVEN UP\tSTATE\tINSTANCE\tLAST ERROR")
	for _, h := range hooks {
		state := "ok"
		if h.Failing {
			state = fmt.Sprintf("failing since %s (%d attempts)", h.FailingSince.UTC().Format(time.RFC3339), h.Attempts)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\n", h.User, h.Host, h.Pending, h.Delivered, h.GivenUp, state, h.Instance, h.LastError)
	}
	return tw.Flush()
}
