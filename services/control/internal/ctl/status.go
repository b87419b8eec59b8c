package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/spf13/cobra"
	"vigil.dev/pkg/contract"
)

// Services are vigil's micro services, in the order status lists them.
var Services = []string{contract.ServiceFeed, contract.ServiceIndicators, contract.ServiceAlerts, contract.ServiceControl}

// controlStatusSubject is vigil-control's status endpoint (every instance
// answers).
var controlStatusSubject = contract.SvcSubject(contract.SvcControl, contract.VerbStatus)

// replyStall ends a gather when no further reply came for this long after
// the first one.
const replyStall = 250 * time.Millisecond

// InstanceStatus is one running service instance as status shows it.
type InstanceStatus struct {
	Service   string    `json:"service"`
	Instance  string    `json:"instance"`
	ID        string    `json:"id"`
	Version   string    `json:"version"`
	Revision  string    `json:"revision,omitempty"`
	Host      string    `json:"host,omitempty"`
	Endpoints int       `json:"endpoints"`
	Started   time.Time `json:"started,omitzero"`
	Requests  int       `json:"requests"`
	Errors    int       `json:"errors"`
	// Partitions are the stream partitions the instance owns
	// (vigil-indicators: of VIGIL_CANDLES, vigil-alerts: of
	// VIGIL_INDICATORS); nil for the other services.
	Partitions []int `json:"partitions,omitempty"`
}

// UserStatus is one user as status shows it: the desired state from KV
// VIGIL_STATE, the command queue from vigil-control and the freshness of
// each symbol's live data from vigil-feed.
type UserStatus struct {
	User      string    `json:"user"`
	Paused    bool      `json:"paused"`
	Mode      string    `json:"mode"`
	Symbols   []string  `json:"symbols"`
	Revision  int64     `json:"revision"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	// Queue is the user's queue at vigil-control; nil when no control
	// instance answered.
	Queue *QueueStatus `json:"queue,omitempty"`
	// LagMs is, per symbol, how long ago its last live data arrived at the
	// owning feed instance (-1: none yet); nil when no feed instance
	// reported the user.
	LagMs map[string]int64 `json:"lag_ms,omitempty"`
}

// QueueStatus is a user's command queue at vigil-control.
type QueueStatus struct {
	Queued  int    `json:"queued"`
	Running string `json:"running,omitempty"`
	Jobs    int    `json:"jobs"`
}

// StatusReport is everything status shows.
type StatusReport struct {
	Services []InstanceStatus `json:"services"`
	Users    []UserStatus     `json:"users"`
}

func newStatusCmd(sys IO, conn *connFlags) *cobra.Command {
	var user string
	var asJSON bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the services' instances and every user's state, queue and freshness",
		Example: `  vigilctl status
  vigilctl status --user demo --json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if user != "" {
				if err := contract.ValidateUserToken(user); err != nil {
					return flagError("user", err)
				}
			}
			if wait <= 0 {
				return usageErrorf("--timeout: must be positive")
			}
			nc, err := conn.connect(cmd.Context(), sys.Getenv)
			if err != nil {
				return err
			}
			defer nc.Close()
			report, err := collectStatus(cmd.Context(), nc, user, wait)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(sys.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(report)
			}
			printStatus(sys.Stdout, report, time.Now())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&user, "user", "u", "", "show only this user")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.DurationVar(&wait, "timeout", 2*time.Second, "how long to wait for the instances' answers")
	return cmd
}

// collectStatus asks every service's instances ($SRV.INFO, $SRV.STATS), the
// feed and control status endpoints and KV VIGIL_STATE, all at once.
func collectStatus(ctx context.Context, nc *nats.Conn, user string, wait time.Duration) (StatusReport, error) {
	var report StatusReport
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		infos    = map[string][]*nats.Msg{}
		stats    = map[string][]*nats.Msg{}
		feeds    []*nats.Msg
		controls []*nats.Msg
		owners   []*nats.Msg
		states   []contract.DesiredState
		stateErr error
	)
	ask := func(subject string, body []byte, into func([]*nats.Msg)) {
		wg.Go(func() {
			msgs := gather(ctx, nc, subject, body, wait)
			mu.Lock()
			defer mu.Unlock()
			into(msgs)
		})
	}
	for _, svc := range Services {
		ask("$SRV.INFO."+svc, nil, func(m []*nats.Msg) { infos[svc] = m })
		ask("$SRV.STATS."+svc, nil, func(m []*nats.Msg) { stats[svc] = m })
	}
	body, _ := json.Marshal(contract.SvcRequest{User: user})
	ask(contract.SvcSubject(contract.SvcFeed, contract.VerbStatus), body, func(m []*nats.Msg) { feeds = m })
	ask(controlStatusSubject, body, func(m []*nats.Msg) { controls = m })
	for _, svc := range []contract.Svc{contract.SvcIndicators, contract.SvcAlerts} {
		ask(contract.SvcSubject(svc, contract.VerbStatus), body, func(m []*nats.Msg) { owners = append(owners, m...) })
	}
	wg.Go(func() {
		st, err := desiredStates(ctx, nc, user, wait)
		mu.Lock()
		defer mu.Unlock()
		states, stateErr = st, err
	})
	wg.Wait()
	if stateErr != nil {
		return report, stateErr
	}

	partitions := partitionsByInstance(owners)
	for _, svc := range Services {
		started := map[string]micro.Stats{}
		for _, m := range stats[svc] {
			var s micro.Stats
			if json.Unmarshal(m.Data, &s) == nil {
				started[s.ID] = s
			}
		}
		var instances []InstanceStatus
		for _, m := range infos[svc] {
			var info micro.Info
			if json.Unmarshal(m.Data, &info) != nil || info.ID == "" {
				continue
			}
			in := InstanceStatus{Service: svc, ID: info.ID, Version: info.Version, Endpoints: len(info.Endpoints),
				Instance: info.Metadata["instance"], Host: info.Metadata["host"], Revision: info.Metadata["revision"],
				Partitions: partitions[svc+"/"+info.ID]}
			if s, ok := started[info.ID]; ok {
				in.Started = s.Started
				for _, e := range s.Endpoints {
					in.Requests += e.NumRequests
					in.Errors += e.NumErrors
				}
			}
			instances = append(instances, in)
		}
		slices.SortFunc(instances, func(a, b InstanceStatus) int {
			return strings.Compare(a.Instance+a.ID, b.Instance+b.ID)
		})
		report.Services = append(report.Services, instances...)
	}

	lags := map[string]map[string]int64{}
	for _, reply := range svcResults(feeds) {
		// Per user the owner's freshness: how long ago live data of each
		// symbol last arrived.
		var fs contract.FeedStatus
		if json.Unmarshal(reply, &fs) != nil {
			continue
		}
		for token, u := range fs.Users {
			if u.Freshness == nil || !u.Owner {
				continue
			}
			if lags[token] == nil {
				lags[token] = map[string]int64{}
			}
			for symbol, f := range u.Freshness {
				lags[token][symbol] = f.LagMs
			}
		}
	}
	queues := map[string]QueueStatus{}
	controlAnswered := len(svcResults(controls)) > 0
	for _, reply := range svcResults(controls) {
		var cs contract.ControlStatus
		if json.Unmarshal(reply, &cs) != nil {
			continue
		}
		for token, q := range cs.Users {
			queues[token] = QueueStatus{Queued: q.Queued, Running: q.Running, Jobs: q.Jobs}
		}
	}
	for _, st := range states {
		u := UserStatus{User: st.User, Paused: st.Paused, Mode: string(st.Mode), Symbols: st.Symbols,
			Revision: st.Revision, UpdatedAt: st.UpdatedAt, LagMs: lags[st.User]}
		// Control lists only users with unfinished commands: the others
		// are idle, if control answered at all.
		if q, ok := queues[st.User]; ok || controlAnswered {
			u.Queue = &q
		}
		report.Users = append(report.Users, u)
	}
	slices.SortFunc(report.Users, func(a, b UserStatus) int { return strings.Compare(a.User, b.User) })
	return report, nil
}

// partitionsByInstance reads the partitions that each indicators and
// alerts instance owns from their status replies, keyed <service>/<id>.
func partitionsByInstance(msgs []*nats.Msg) map[string][]int {
	out := map[string][]int{}
	for _, m := range msgs {
		var r contract.SvcReply
		var st struct {
			Partitions []int `json:"partitions"`
		}
		if json.Unmarshal(m.Data, &r) == nil && r.OK && json.Unmarshal(r.Result, &st) == nil {
			out[r.Service+"/"+r.Instance] = st.Partitions
		}
	}
	return out
}

// svcResults are the results of the ok replies among msgs
// (contract.SvcReply).
func svcResults(msgs []*nats.Msg) []json.RawMessage {
	var out []json.RawMessage
	for _, m := range msgs {
		var r contract.SvcReply
		if json.Unmarshal(m.Data, &r) == nil && r.OK {
			out = append(out, r.Result)
		}
	}
	return out
}

// gather sends a request to subject and collects every reply until none
// came for replyStall after the first, or wait passed. A "no responders"
// status ends it at once.
func gather(ctx context.Context, nc *nats.Conn, subject string, body []byte, wait time.Duration) []*nats.Msg {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, body); err != nil {
		return nil
	}
	deadline := time.Now().Add(wait)
	var out []*nats.Msg
	for {
		timeout := time.Until(deadline)
		if len(out) > 0 {
			timeout = min(timeout, replyStall)
		}
		if timeout <= 0 || ctx.Err() != nil {
			return out
		}
		msg, err := sub.NextMsg(timeout)
		if err != nil {
			return out
		}
		if len(msg.Data) == 0 && msg.Header.Get("Status") == "503" {
			return out
		}
		out = append(out, msg)
	}
}

// desiredStates reads the desired state of user, or of every user, from
// KV VIGIL_STATE.
func desiredStates(ctx context.Context, nc *nats.Conn, user string, wait time.Duration) ([]contract.DesiredState, error) {
	ctx, cancel := context.WithTimeout(ctx, max(wait, 5*time.Second))
	defer cancel()
	if user != "" {
		return userState(ctx, nc, user)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		return nil, fmt.Errorf("open KV %s: %w", contract.BucketState, err)
	}
	pattern := "user.*"
	if user != "" {
		pattern = contract.StateKey(user)
	}
	watcher, err := kv.Watch(ctx, pattern, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read KV %s: %w", contract.BucketState, err)
	}
	defer func() { _ = watcher.Stop() }()
	var out []contract.DesiredState
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("read KV %s: %w", contract.BucketState, ctx.Err())
		case e := <-watcher.Updates():
			if e == nil {
				return out, nil
			}
			var st contract.DesiredState
			if err := json.Unmarshal(e.Value(), &st); err != nil {
				continue
			}
			if st.User == "" {
				st.User, _ = contract.UserFromStateKey(e.Key())
			}
			out = append(out, st)
		}
	}
}

// userState reads one user's desired state with a direct get by subject
// ($JS.API.DIRECT.GET.KV_VIGIL_STATE.$KV.VIGIL_STATE.user.<user>), which
// the admin may call and a tenant's account imports for its own user
// (deploy/nats), so status --user works with a tenant's credentials. No
// state yet is an empty list.
func userState(ctx context.Context, nc *nats.Conn, user string) ([]contract.DesiredState, error) {
	stream := "KV_" + contract.BucketState
	subject := "$JS.API.DIRECT.GET." + stream + ".$KV." + contract.BucketState + "." + contract.StateKey(user)
	msg, err := nc.RequestWithContext(ctx, subject, nil)
	if err != nil {
		return nil, fmt.Errorf("read KV %s key %s: %w", contract.BucketState, contract.StateKey(user), err)
	}
	switch status := msg.Header.Get("Status"); {
	case status == "404":
		return nil, nil
	case status != "":
		return nil, fmt.Errorf("read KV %s key %s: %s %s", contract.BucketState, contract.StateKey(user), status, msg.Header.Get("Description"))
	case msg.Header.Get("KV-Operation") != "":
		return nil, nil // deleted or purged
	}
	var st contract.DesiredState
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		return nil, fmt.Errorf("read KV %s key %s: %w", contract.BucketState, contract.StateKey(user), err)
	}
	if st.User == "" {
		st.User = user
	}
	return []contract.DesiredState{st}, nil
}

// uptimeText is how long an instance started at started has run at now,
// to the second, or "-" when it did not say when it started.
func uptimeText(now, started time.Time) string {
	if started.IsZero() {
		return "-"
	}
	return now.Sub(started).Round(time.Second).String()
}

// printStatus writes the report as two tables.
func printStatus(w io.Writer, r StatusReport, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tINSTANCE\tID\tVERSION\tREVISION\tHOST\tUPTIME\tREQUESTS\tERRORS\tPARTITIONS")
	for _, svc := range Services {
		found := false
		for _, in := range r.Services {
			if in.Service != svc {
				continue
			}
			found = true
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", svc, dash(in.Instance), in.ID, dash(in.Version),
				dash(shortRevision(in.Revision)), dash(in.Host), uptimeText(now, in.Started), in.Requests, in.Errors, partitionsText(in.Partitions))
		}
		if !found {
			fmt.Fprintf(tw, "%s\t(no instance answers)\t\t\t\t\t\t\t\n", svc)
		}
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	if len(r.Users) == 0 {
		fmt.Fprintf(w, "no users in KV %s\n", contract.BucketState)
		return
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "USER\tSTATE\tMODE\tSYMBOLS\tREVISION\tQUEUE\tFRESHNESS")
	for _, u := range r.Users {
		state := "running"
		if u.Paused {
			state = "paused"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", u.User, state, dash(u.Mode), dash(strings.Join(u.Symbols, ",")),
			u.Revision, queueText(u.Queue), freshnessText(u))
	}
	_ = tw.Flush()
}

// partitionsText is "-" or the count of partitions, e.g. "21".
func partitionsText(p []int) string {
	if len(p) == 0 {
		return "-"
	}
	return strconv.Itoa(len(p))
}

// queueText is "idle", "2 queued", "running <id>", "1 job", ...
func queueText(q *QueueStatus) string {
	if q == nil {
		return "-"
	}
	var parts []string
	if q.Running != "" {
		parts = append(parts, "running "+q.Running)
	}
	if q.Queued > 0 {
		parts = append(parts, strconv.Itoa(q.Queued)+" queued")
	}
	if q.Jobs > 0 {
		parts = append(parts, strconv.Itoa(q.Jobs)+" jobs")
	}
	if len(parts) == 0 {
		return "idle"
	}
	return strings.Join(parts, ", ")
}

// freshnessText is "BTC-USD 0.4s, ETH-USD no data" for the user's symbols.
func freshnessText(u UserStatus) string {
	if u.LagMs == nil {
		return "-"
	}
	symbols := slices.Clone(u.Symbols)
	for s := range u.LagMs {
		if !slices.Contains(symbols, s) {
			symbols = append(symbols, s)
		}
	}
	parts := make([]string, 0, len(symbols))
	for _, s := range symbols {
		lag, ok := u.LagMs[s]
		switch {
		case !ok:
			parts = append(parts, s+" not subscribed")
		case lag < 0:
			parts = append(parts, s+" no data")
		default:
			parts = append(parts, s+" "+formatLag(time.Duration(lag)*time.Millisecond))
		}
	}
	return strings.Join(parts, ", ")
}

// formatLag is "120ms" below a second, else "3.4s" or "2m5s".
func formatLag(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(100 * time.Millisecond).String()
}

func shortRevision(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
