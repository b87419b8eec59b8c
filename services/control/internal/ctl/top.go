package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/membership"
)

// alertWindow is the window of top's ALERTS/1M column.
const alertWindow = time.Minute

// TopReport is one frame of top: status's report, plus per instance the
// users it owns and its lag, per user the alerts of the last minute, and
// the feed's market data source with its clock.
type TopReport struct {
	StatusReport
	// Instances are the instances of every service with what they own,
	// in status's order.
	Instances []TopInstance `json:"instances"`
	// AlertsLastMinute counts each user's alerts in VIGIL_ALERTS published
	// in the minute before At.
	AlertsLastMinute map[string]int `json:"alerts_last_minute"`
	// Sources are the feed instances' market data sources and clocks.
	Sources []SourceClock `json:"sources,omitempty"`
	At      time.Time     `json:"at"`
}

// TopInstance is one instance as top shows it.
type TopInstance struct {
	InstanceStatus
	// Users counts the users the instance owns (-1: its status did not
	// answer). For vigil-control: the users of KV VIGIL_STATE whose
	// commands it runs (membership.Owner over the members it reports).
	Users int `json:"users"`
	// LagMs is the largest lag the instance reports over its users (feed:
	// age of the last live data; indicators: candle to indicator), -1 when
	// it reports none.
	LagMs int64 `json:"lag_ms"`
	// Pending is the instance's consumer backlog, messages not delivered
	// or not acknowledged yet (vigil-alerts: indicator updates), -1 when
	// it reports none.
	Pending int64 `json:"pending"`
}

// SourceClock is a feed instance's market data source and clock.
type SourceClock struct {
	Instance string `json:"instance"`
	Source   string `json:"source"`
	// Clock is the simulator's clock mode (ahead, wall), SimTime its
	// current time; empty for real sources.
	Clock   string    `json:"clock,omitempty"`
	SimTime time.Time `json:"sim_time,omitzero"`
}

// sourceClock is the part of a vigil-feed status's source_status (the
// market source's own diagnostics) that top shows: the simulator's clock.
type sourceClock struct {
	SourceStatus struct {
		Clock   string    `json:"clock"`
		SimTime time.Time `json:"sim_time"`
	} `json:"source_status"`
}

func newTopCmd(sys IO, conn *connFlags) *cobra.Command {
	var (
		interval time.Duration
		wait     time.Duration
		once     bool
	)
	cmd := &cobra.Command{
		Use:   "top",
		Short: "A live view of users and instances, refreshed like top (one plain frame when not on a terminal)",
		Long: `top shows, refreshed every --interval until Ctrl-C:

  users:     state, mode, freshness per symbol, command queue, alerts in the
             last minute (from KV VIGIL_STATE, vigil-control, vigil-feed and
             the VIGIL_ALERTS stream)
  instances: service, instance, host, uptime, users owned, lag (from
             $SRV.INFO, $SRV.STATS and each service's status endpoint;
             vigil-alerts' lag is its consumer's pending updates)

and the feed's market source with its clock (a simulator says which clock
it runs). When stdout is not a terminal, or with --once, it prints one
frame as plain tables and exits.`,
		Example: `  vigilctl top
  vigilctl top --interval 5s
  vigilctl top --once`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if interval <= 0 {
				return usageErrorf("--interval: must be positive")
			}
			if wait <= 0 {
				return usageErrorf("--timeout: must be positive")
			}
			nc, err := conn.connect(cmd.Context(), sys.Getenv)
			if err != nil {
				return err
			}
			defer nc.Close()
			isTerm, _ := sys.Terminal(sys.Stdout)
			if once || !isTerm {
				report, err := collectTop(cmd.Context(), nc, wait)
				if err != nil {
					return err
				}
				printTop(sys.Stdout, report)
				return nil
			}
			return liveTop(cmd.Context(), sys.Stdout, nc, interval, wait)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&interval, "interval", 2*time.Second, "time between two refreshes")
	f.DurationVar(&wait, "timeout", time.Second, "how long to wait for the instances' answers")
	f.BoolVar(&once, "once", false, "print one frame and exit, also on a terminal")
	return cmd
}

// Terminal control sequences of the live view.
const (
	altScreenOn  = "\x1b[?1049h\x1b[?25l" // alternate screen, cursor hidden
	altScreenOff = "\x1b[?25h\x1b[?1049l"
	homeClear    = "\x1b[H\x1b[2J"
)

// liveTop redraws the report every interval on the terminal's alternate
// screen until ctx ends (Ctrl-C), then restores the screen.
func liveTop(ctx context.Context, w io.Writer, nc *nats.Conn, interval, wait time.Duration) error {
	fmt.Fprint(w, altScreenOn)
	defer fmt.Fprint(w, altScreenOff)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		report, err := collectTop(ctx, nc, wait)
		if ctx.Err() != nil {
			return nil
		}
		var frame strings.Builder
		frame.WriteString(homeClear)
		fmt.Fprintf(&frame, "vigilctl top  %s  every %s, Ctrl-C quits\n\n", time.Now().Format("15:04:05"), interval)
		if err != nil {
			fmt.Fprintf(&frame, "error: %v\n", err)
		} else {
			printTop(&frame, report)
		}
		fmt.Fprint(w, frame.String())
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// collectTop gathers one frame: status's report, the status endpoints of
// the feed, indicators and alerts, and the last minute of VIGIL_ALERTS,
// all at once.
func collectTop(ctx context.Context, nc *nats.Conn, wait time.Duration) (TopReport, error) {
	now := time.Now()
	report := TopReport{At: now.UTC()}
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		statusErr error
		alertsErr error
		replies   = map[contract.Svc][]*nats.Msg{}
		controls  []*nats.Msg
	)
	wg.Go(func() {
		r, err := collectStatus(ctx, nc, "", wait)
		mu.Lock()
		defer mu.Unlock()
		report.StatusReport, statusErr = r, err
	})
	body, _ := json.Marshal(contract.SvcRequest{})
	for _, svc := range []contract.Svc{contract.SvcFeed, contract.SvcIndicators, contract.SvcAlerts} {
		wg.Go(func() {
			msgs := gather(ctx, nc, contract.SvcSubject(svc, contract.VerbStatus), body, wait)
			mu.Lock()
			defer mu.Unlock()
			replies[svc] = msgs
		})
	}
	wg.Go(func() {
		msgs := gather(ctx, nc, controlStatusSubject, body, wait)
		mu.Lock()
		defer mu.Unlock()
		controls = msgs
	})
	wg.Go(func() {
		counts, err := alertsSince(ctx, nc, now.Add(-alertWindow), max(wait, 5*time.Second))
		mu.Lock()
		defer mu.Unlock()
		report.AlertsLastMinute, alertsErr = counts, err
	})
	wg.Wait()
	if statusErr != nil {
		return report, statusErr
	}
	owned := map[string]ownership{}
	for _, svc := range []contract.Svc{contract.SvcFeed, contract.SvcIndicators, contract.SvcAlerts} {
		for _, m := range replies[svc] {
			var r contract.SvcReply
			if json.Unmarshal(m.Data, &r) != nil || !r.OK {
				continue
			}
			o, source, err := ownershipOf(svc, r.Result)
			if err != nil {
				continue
			}
			owned[r.Instance] = o
			if source != nil {
				source.Instance = r.Instance
				report.Sources = append(report.Sources, *source)
			}
		}
	}
	users := make([]string, 0, len(report.Users))
	for _, u := range report.Users {
		users = append(users, u.User)
	}
	for _, m := range controls {
		if id, o, ok := controlOwnership(m.Data, users); ok {
			owned[id] = o
		}
	}
	for _, in := range report.Services {
		ti := TopInstance{InstanceStatus: in, Users: -1, LagMs: -1, Pending: -1}
		if o, ok := owned[in.ID]; ok {
			ti.Users, ti.LagMs, ti.Pending = o.users, o.lagMs, o.pending
		}
		report.Instances = append(report.Instances, ti)
	}
	for i := range report.Sources {
		for _, in := range report.Services {
			if in.ID == report.Sources[i].Instance && in.Instance != "" {
				report.Sources[i].Instance = in.Instance
			}
		}
	}
	slices.SortFunc(report.Sources, func(a, b SourceClock) int { return strings.Compare(a.Instance, b.Instance) })
	if alertsErr != nil {
		report.AlertsLastMinute = nil
	}
	return report, nil
}

// ownership is what one instance owns: users, the largest lag and its
// consumer's backlog.
type ownership struct {
	users   int
	lagMs   int64
	pending int64
}

// controlOwnership reads a vigil-control status reply: the instance's id
// and, of users (the users of KV VIGIL_STATE), how many it owns by the
// membership it reports (control runs a user's commands on the member
// membership.Owner names). ok is false for a reply that is not one.
func controlOwnership(reply []byte, users []string) (id string, o ownership, ok bool) {
	var r contract.SvcReply
	var st contract.ControlStatus
	if json.Unmarshal(reply, &r) != nil || !r.OK || r.Instance == "" || json.Unmarshal(r.Result, &st) != nil {
		return "", o, false
	}
	o = ownership{lagMs: -1, pending: -1}
	for _, u := range users {
		if membership.Owner(st.Members, u) == r.Instance {
			o.users++
		}
	}
	return r.Instance, o, true
}

// ownershipOf reads a status result of svc (feed, indicators or alerts):
// the users the instance owns (a feed reports the users it does not own
// too), the largest lag over them (the feed's freshness per symbol, the
// indicators' lag behind the candles) and the alerts' consumer backlog;
// and, of a feed, its source and the simulator's clock.
func ownershipOf(svc contract.Svc, result []byte) (ownership, *SourceClock, error) {
	o := ownership{lagMs: -1, pending: -1}
	switch svc {
	case contract.SvcFeed:
		var st contract.FeedStatus
		var clock sourceClock
		if err := json.Unmarshal(result, &st); err != nil {
			return o, nil, err
		}
		if err := json.Unmarshal(result, &clock); err != nil {
			return o, nil, err
		}
		for _, u := range st.Users {
			if !u.Owner {
				continue
			}
			o.users++
			for _, f := range u.Freshness {
				o.lagMs = max(o.lagMs, f.LagMs)
			}
		}
		if st.Source == "" {
			return o, nil, nil
		}
		return o, &SourceClock{Source: st.Source, Clock: clock.SourceStatus.Clock, SimTime: clock.SourceStatus.SimTime}, nil
	case contract.SvcIndicators:
		var st contract.IndicatorsStatus
		if err := json.Unmarshal(result, &st); err != nil {
			return o, nil, err
		}
		for _, u := range st.Users {
			o.users++
			if u.LastCandle != nil {
				o.lagMs = max(o.lagMs, int64(u.LagMs))
			}
		}
		return o, nil, nil
	case contract.SvcAlerts:
		var st contract.AlertsStatus
		if err := json.Unmarshal(result, &st); err != nil {
			return o, nil, err
		}
		o.users = len(st.Users)
		if st.Consumer != nil {
			o.pending = st.Consumer.Total()
		}
		return o, nil, nil
	}
	return o, nil, fmt.Errorf("no status of %s in top", svc)
}

// alertsSince counts, per user, the alerts VIGIL_ALERTS received since
// since, reading them with an ordered consumer that starts at that time.
func alertsSince(ctx context.Context, nc *nats.Conn, since time.Time, wait time.Duration) (map[string]int, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	cons, err := js.OrderedConsumer(ctx, contract.StreamAlerts, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"vigil.alert.>"}, DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since,
	})
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", contract.StreamAlerts, err)
	}
	counts := map[string]int{}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", contract.StreamAlerts, err)
	}
	for pending := info.NumPending; pending > 0; {
		batch, err := cons.FetchNoWait(int(min(pending, 256)))
		if err != nil {
			return nil, fmt.Errorf("read stream %s: %w", contract.StreamAlerts, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if user, ok := alertUser(m.Subject()); ok {
				counts[user]++
			}
			if md, err := m.Metadata(); err == nil {
				pending = md.NumPending
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("read stream %s: %w", contract.StreamAlerts, err)
		}
		if n == 0 {
			break
		}
	}
	return counts, nil
}

// alertUser is the user of an alert subject vigil.alert.<user>.<rule>.
func alertUser(subject string) (string, bool) {
	parts := strings.Split(subject, ".")
	if len(parts) < 4 || parts[0] != "vigil" || parts[1] != "alert" {
		return "", false
	}
	return parts[2], true
}

// printTop writes a frame as plain tables: the sources' clocks, users,
// then instances.
func printTop(w io.Writer, r TopReport) {
	for _, s := range r.Sources {
		switch s.Clock {
		case "":
			fmt.Fprintf(w, "market: %s (%s)\n", s.Source, s.Instance)
		case "wall":
			fmt.Fprintf(w, "market: simulator on the wall clock, sim time %s (%s)\n", s.SimTime.Format(time.RFC3339), s.Instance)
		default:
			fmt.Fprintf(w, "market: simulator %s of the wall clock, sim time %s (%s)\n", s.Clock, s.SimTime.Format(time.RFC3339), s.Instance)
		}
	}
	if len(r.Sources) > 0 {
		fmt.Fprintln(w)
	}
	if len(r.Users) == 0 {
		fmt.Fprintf(w, "no users in KV %s\n", contract.BucketState)
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "USER\tSTATE\tMODE\tQUEUE\tALERTS/1M\tFRESHNESS")
		for _, u := range r.Users {
			state := "running"
			if u.Paused {
				state = "paused"
			}
			alerts := "-"
			if r.AlertsLastMinute != nil {
				alerts = fmt.Sprint(r.AlertsLastMinute[u.User])
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", u.User, state, dash(u.Mode), queueText(u.Queue), alerts, freshnessText(u))
		}
		_ = tw.Flush()
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tINSTANCE\tHOST\tUPTIME\tUSERS\tLAG")
	for _, svc := range Services {
		found := false
		for _, in := range r.Instances {
			if in.Service != svc {
				continue
			}
			found = true
			users := "-"
			if in.Users >= 0 {
				users = fmt.Sprint(in.Users)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", svc, dash(in.Instance), dash(in.Host), uptimeText(r.At, in.Started), users, lagText(in))
		}
		if !found {
			fmt.Fprintf(tw, "%s\t(no instance answers)\t\t\t\t\n", svc)
		}
	}
	_ = tw.Flush()
}

// lagText is top's LAG of an instance: its lag, its consumer's backlog
// ("12 pending"), both, or "-".
func lagText(in TopInstance) string {
	var parts []string
	if in.LagMs >= 0 {
		parts = append(parts, formatLag(time.Duration(in.LagMs)*time.Millisecond))
	}
	if in.Pending >= 0 {
		parts = append(parts, fmt.Sprintf("%d pending", in.Pending))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}
