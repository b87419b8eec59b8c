//go:build ha

package multihost

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

// The high-availability tests (build tag ha, make test-ha) run the real
// binaries, kill what they depend on with SIGKILL and check that the
// system recovers by itself with nothing acked lost and nothing doubled.
// An observer drives commands and watches alerts while that happens.

// commandEvery is how often the observer sends each user a command.
const commandEvery = time.Second

// recoveryBound is the loose bound the tests assert on a recovery; the
// target (15 s) is measured and logged, not asserted.
const recoveryBound = 60 * time.Second

// webhookUsers are the users whose settings name the test's webhook
// receiver.
var webhookUsers = []string{"u1", "u2"}

// settingsOf is the settings document of user: the live price rule, and
// the webhook at hookURL for webhookUsers.
func settingsOf(user, hookURL string) json.RawMessage {
	if !slices.Contains(webhookUsers, user) {
		return json.RawMessage(liveSettings)
	}
	return json.RawMessage(strings.Replace(liveSettings, `{"mode":`, `{"webhook":{"url":"`+hookURL+`"},"mode":`, 1))
}

// sentCommand is one command the observer sent.
type sentCommand struct {
	user   string
	sentAt time.Time
	acked  bool
	// outcome says how the request ended and after how long, for the
	// log of a slow recovery.
	outcome string
}

// observer sends every user a resume every commandEvery (resume of a
// running user changes nothing, so alerts keep coming) and watches the
// results and alerts on the core subjects.
type observer struct {
	t     *testing.T
	nc    *nats.Conn
	users []string

	mu       sync.Mutex
	sent     map[string]*sentCommand // by command id
	tried    map[string]int          // requests that came back (any outcome), by user
	results  map[string]time.Time    // first succeeded result of a command, by id
	alerts   map[string][]time.Time  // arrival of alerts fired after the given time, by user
	firedAt  map[string][]time.Time  // the alerts' fired_at, by user (parallel to alerts)
	stop     context.CancelFunc
	finished sync.WaitGroup
}

// newObserver subscribes to results and alerts and starts the command
// senders; they stop at the end of the test or at o.stopCommands.
func newObserver(t *testing.T, nc *nats.Conn, users []string) *observer {
	t.Helper()
	o := &observer{t: t, nc: nc, users: users, sent: map[string]*sentCommand{}, tried: map[string]int{},
		results: map[string]time.Time{}, alerts: map[string][]time.Time{}, firedAt: map[string][]time.Time{}}
	if _, err := nc.Subscribe("vigil.result.>", o.onResult); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe("vigil.alert.>", o.onAlert); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	o.stop = cancel
	for _, u := range users {
		o.finished.Add(1)
		go o.sendCommands(ctx, u)
	}
	t.Cleanup(o.stopCommands)
	return o
}

func (o *observer) onResult(m *nats.Msg) {
	var res contract.Result
	if json.Unmarshal(m.Data, &res) != nil || res.Status != contract.StatusSucceeded {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.results[res.ID]; !ok {
		o.results[res.ID] = time.Now()
	}
}

func (o *observer) onAlert(m *nats.Msg) {
	var a contract.Alert
	if json.Unmarshal(m.Data, &a) != nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.alerts[a.User] = append(o.alerts[a.User], time.Now())
	o.firedAt[a.User] = append(o.firedAt[a.User], a.FiredAt)
}

// sendCommands sends user a resume with an id of its own every
// commandEvery until ctx ends.
func (o *observer) sendCommands(ctx context.Context, user string) {
	defer o.finished.Done()
	tick := time.NewTicker(commandEvery)
	defer tick.Stop()
	for n := 1; ; n++ {
		id := fmt.Sprintf("ha-%s-%d-%d", user, time.Now().UnixNano()%1e9, n)
		msg := nats.NewMsg(contract.CommandSubject(user, contract.CmdResume))
		msg.Header.Set(jetstream.MsgIDHeader, id)
		msg.Data = []byte(`{}`)
		o.mu.Lock()
		o.sent[id] = &sentCommand{user: user, sentAt: time.Now()}
		o.mu.Unlock()
		reqCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		began := time.Now()
		reply, err := o.nc.RequestMsgWithContext(reqCtx, msg)
		cancel()
		var ack contract.Ack
		acked := err == nil && json.Unmarshal(reply.Data, &ack) == nil && ack.Accepted && ack.ID == id
		outcome := "acked"
		switch {
		case err != nil:
			outcome = err.Error()
		case !acked:
			outcome = "refused: " + string(reply.Data)
		}
		o.mu.Lock()
		o.sent[id].acked = acked
		o.sent[id].outcome = fmt.Sprintf("%s %s after %v", began.Format("15:04:05.000"), outcome, time.Since(began).Round(time.Millisecond))
		if ctx.Err() == nil {
			o.tried[user]++
		}
		o.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// stopCommands stops the senders and waits for them.
func (o *observer) stopCommands() {
	o.stop()
	o.finished.Wait()
}

// tries is how many requests of every user came back so far.
func (o *observer) tries() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return copyCounts(o.tried)
}

func copyCounts(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// waitTries waits until every user's sender has had n more requests come
// back (answered, refused or timed out) than in before: the observer's
// clock, so an outage lasts a few command rounds.
func (o *observer) waitTries(before map[string]int, n int) {
	o.t.Helper()
	testenv.WaitFor(o.t, 2*time.Minute, fmt.Sprintf("%d command rounds of every user", n), func() bool {
		now := o.tries()
		for _, u := range o.users {
			if now[u] < before[u]+n {
				return false
			}
		}
		return true
	})
}

// recovery is how long after since every user had a command sent after
// since succeed and an alert fired after since arrive.
type recovery struct {
	commands, alerts time.Duration
	// slowestAlerts names the user whose alerts came back last.
	slowestAlerts string
}

func (r recovery) String() string {
	return fmt.Sprintf("commands %v, alerts %v (last: %s)", r.commands.Round(100*time.Millisecond), r.alerts.Round(100*time.Millisecond), r.slowestAlerts)
}

// waitRecovered waits (at most bound after since) until every user has a
// succeeded command sent after since and an alert fired after since, and
// returns how long each took.
func (o *observer) waitRecovered(since time.Time, bound time.Duration, what string) recovery {
	o.t.Helper()
	var r recovery
	var lagging []string
	failed := o.t.Failed()
	o.t.Cleanup(func() {
		if !failed && o.t.Failed() && len(lagging) > 0 {
			o.t.Logf("after %s, still waiting for: %v", what, lagging)
		}
	})
	testenv.WaitFor(o.t, bound-time.Since(since), "every user's commands and alerts after "+what, func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		cmds := map[string]time.Time{}
		for id, s := range o.sent {
			at, ok := o.results[id]
			if ok && s.sentAt.After(since) && (cmds[s.user].IsZero() || at.Before(cmds[s.user])) {
				cmds[s.user] = at
			}
		}
		alerts := map[string]time.Time{}
		for u, arrivals := range o.alerts {
			for i, at := range arrivals {
				if o.firedAt[u][i].After(since) {
					alerts[u] = at
					break
				}
			}
		}
		lagging = lagging[:0]
		for _, u := range o.users {
			if cmds[u].IsZero() {
				lagging = append(lagging, u+" commands")
			}
			if alerts[u].IsZero() {
				lagging = append(lagging, u+" alerts")
			}
		}
		if len(lagging) > 0 {
			return false
		}
		slowest := ""
		for _, u := range o.users {
			if d := cmds[u].Sub(since); d > r.commands {
				r.commands, slowest = d, u
			}
			if d := alerts[u].Sub(since); d > r.alerts {
				r.alerts, r.slowestAlerts = d, u
			}
		}
		if r.commands > 15*time.Second {
			o.logRequests(slowest, since)
		}
		return true
	})
	return r
}

// logRequests logs how user's requests sent after since ended. The
// caller holds o.mu.
func (o *observer) logRequests(user string, since time.Time) {
	var lines []string
	for _, s := range o.sent {
		if s.user == user && s.sentAt.After(since) && s.outcome != "" {
			lines = append(lines, s.outcome)
		}
	}
	slices.Sort(lines)
	o.t.Logf("%s's commands after %s: %s", user, since.Format("15:04:05.000"), strings.Join(lines, "; "))
}

// commandIDs are the ids the observer sent and those that were acked.
func (o *observer) commandIDs() (sent, acked map[string]string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	sent, acked = map[string]string{}, map[string]string{}
	for id, s := range o.sent {
		sent[id] = s.user
		if s.acked {
			acked[id] = s.user
		}
	}
	return sent, acked
}

// hookReceiver is the test's webhook target: it counts the deliveries of
// every alert id.
type hookReceiver struct {
	mu         sync.Mutex
	deliveries map[string]int
	url        string
}

// startHookReceiver serves a webhook receiver on addr (host:0 picks a
// port) until the test ends.
func startHookReceiver(t *testing.T, addr string) *hookReceiver {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := &hookReceiver{deliveries: map[string]int{}, url: "http://" + l.Addr().String() + "/hook"}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return h
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("X-Vigil-Alert-Id")
	if id == "" {
		http.Error(w, "no X-Vigil-Alert-Id", http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	h.deliveries[id]++
	h.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (h *hookReceiver) snapshot() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return copyCounts(h.deliveries)
}

// streamMessages reads every message of stream on subjects filter with an
// ordered consumer.
func streamMessages(ctx context.Context, t *testing.T, js jetstream.JetStream, stream, filter string) []jetstream.Msg {
	t.Helper()
	var out []jetstream.Msg
	testenv.WaitFor(t, 2*time.Minute, "every message of "+stream, func() bool {
		out = out[:0]
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		if err != nil {
			return false
		}
		if info.State.Msgs == 0 {
			return true
		}
		cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
		if err != nil {
			return false
		}
		for {
			batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
			if err != nil {
				return false
			}
			n := 0
			for m := range batch.Messages() {
				n++
				out = append(out, m)
				if md, err := m.Metadata(); err == nil && md.NumPending == 0 {
					return true
				}
			}
			if n == 0 {
				return false // nothing came within the wait: read again from the start
			}
		}
	})
	return out
}

// verifyNothingLostOrDoubled checks, once the system has settled, that
// every acked command has exactly one result, ran at most once and has one
// final row in command_log (and nothing the observer did not send is
// there), and that every alert id is in VIGIL_ALERTS once, in
// alert_events once, and (for webhookUsers) at the receiver.
func verifyNothingLostOrDoubled(ctx context.Context, t *testing.T, js jetstream.JetStream, pool *pgxpool.Pool, o *observer, hook *hookReceiver) {
	t.Helper()
	o.stopCommands()
	sent, acked := o.commandIDs()
	t.Logf("commands: %d sent, %d acked", len(sent), len(acked))

	// Results: one per acked command, none for an id never sent.
	results := map[string]int{}
	for _, m := range streamMessages(ctx, t, js, contract.StreamResults, "vigil.result.>") {
		id := m.Subject()[strings.LastIndexByte(m.Subject(), '.')+1:]
		if strings.HasPrefix(id, "ha-") {
			results[id]++
		}
	}
	for id := range acked {
		if results[id] != 1 {
			t.Errorf("acked command %s has %d results in %s, want 1", id, results[id], contract.StreamResults)
		}
	}
	for id, n := range results {
		if _, ok := sent[id]; !ok || n > 1 {
			t.Errorf("command %s: %d results (sent by the test: %v)", id, n, ok)
		}
	}

	// Runs: at most one running audit record (one attempt) per command.
	runs := map[string]int{}
	for _, m := range streamMessages(ctx, t, js, natsx.StreamCommands, ">") {
		parts := strings.Split(m.Headers().Get(jetstream.MsgIDHeader), "/")
		if len(parts) == 4 && parts[2] == "running" {
			runs[parts[0]+"/"+parts[1]]++
		}
	}
	for key, n := range runs {
		if n > 1 {
			t.Errorf("command %s started %d times", key, n)
		}
	}

	// command_log: every acked command once with a final status, nothing
	// the test did not send.
	var rows map[string]string
	var unsettled []string
	t.Cleanup(func() {
		if t.Failed() && len(unsettled) > 0 {
			t.Logf("%d acked commands without a final row in command_log, e.g. %v", len(unsettled), unsettled[:min(5, len(unsettled))])
		}
	})
	testenv.WaitFor(t, 2*time.Minute, "command_log to hold every acked command with its final status", func() bool {
		rows = map[string]string{}
		r, err := pool.Query(ctx, `SELECT id, status FROM command_log WHERE id LIKE 'ha-%'`)
		if err != nil {
			return false
		}
		defer r.Close()
		for r.Next() {
			var id, status string
			if r.Scan(&id, &status) != nil {
				return false
			}
			rows[id] = status
		}
		if r.Err() != nil {
			return false
		}
		unsettled = unsettled[:0]
		for id := range acked {
			if st := rows[id]; st == "" || st == "accepted" || st == "running" {
				unsettled = append(unsettled, id+"="+st)
			}
		}
		return len(unsettled) == 0
	})
	for id := range rows {
		if _, ok := sent[id]; !ok {
			t.Errorf("command_log has %s, which the test never sent", id)
		}
	}
	statuses := map[string]int{}
	for id := range acked {
		statuses[rows[id]]++
	}
	t.Logf("acked commands by final status: %v", statuses)

	// Alerts: each id once in the stream, the same ids in alert_events,
	// and every webhook user's at the receiver. Alerts keep firing, so
	// the table and the receiver are read before the stream (what they
	// hold then must be in it) and after (they must hold all it held).
	earlyEvents := alertEvents(ctx, t, pool)
	earlyHooks := hook.snapshot()
	stored := map[string]string{}
	for _, m := range streamMessages(ctx, t, js, contract.StreamAlerts, "vigil.alert.>") {
		var a contract.Alert
		if err := json.Unmarshal(m.Data(), &a); err != nil {
			t.Errorf("alert at %s: %v", m.Subject(), err)
			continue
		}
		if _, dup := stored[a.ID]; dup {
			t.Errorf("alert %s is in %s twice", a.ID, contract.StreamAlerts)
		}
		stored[a.ID] = a.User
	}
	if len(stored) == 0 {
		t.Fatal("no alert in " + contract.StreamAlerts)
	}
	var events map[string]int
	testenv.WaitFor(t, 2*time.Minute, "alert_events to hold every stored alert", func() bool {
		events = alertEvents(ctx, t, pool)
		for id := range stored {
			if events[id] == 0 {
				return false
			}
		}
		return true
	})
	for id := range stored {
		if events[id] != 1 {
			t.Errorf("alert %s is in alert_events %d times, want 1", id, events[id])
		}
	}
	for id := range earlyEvents {
		if _, ok := stored[id]; !ok {
			t.Errorf("alert_events has %s, which %s does not", id, contract.StreamAlerts)
		}
	}
	want := 0
	for _, u := range stored {
		if slices.Contains(webhookUsers, u) {
			want++
		}
	}
	var got map[string]int
	testenv.WaitFor(t, 2*time.Minute, "the webhook receiver to get every webhook user's alert", func() bool {
		got = hook.snapshot()
		n := 0
		for id, u := range stored {
			if slices.Contains(webhookUsers, u) && got[id] > 0 {
				n++
			}
		}
		return n == want
	})
	for id := range earlyHooks {
		if u, ok := stored[id]; !ok || !slices.Contains(webhookUsers, u) {
			t.Errorf("the webhook receiver got %s, which is no webhook user's stored alert", id)
		}
	}
	deliveries := 0
	for _, n := range got {
		deliveries += n
	}
	t.Logf("alerts: %d stored in %s, each once in alert_events; %d webhook deliveries of %d ids (%d repeated, folded by id)",
		len(stored), contract.StreamAlerts, deliveries, len(got), deliveries-len(got))
}

// alertEvents counts the rows of alert_events by id.
func alertEvents(ctx context.Context, t *testing.T, pool *pgxpool.Pool) map[string]int {
	t.Helper()
	events := map[string]int{}
	testenv.WaitFor(t, time.Minute, "alert_events to answer", func() bool {
		clear(events)
		r, err := pool.Query(ctx, `SELECT id, count(*) FROM alert_events GROUP BY id`)
		if err != nil {
			return false
		}
		defer r.Close()
		for r.Next() {
			var id string
			var n int
			if r.Scan(&id, &n) != nil {
				return false
			}
			events[id] = n
		}
		return r.Err() == nil
	})
	return events
}
