package daemon

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/alerts/internal/rules"
	"vigil.dev/services/alerts/internal/webhook"
)

var (
	rsiHot = contract.Rule{ID: "rsi-hot", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleCross,
		SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}, Op: contract.OpCrossesAbove, Value: ptr(70)}
	rsiCold = contract.Rule{ID: "rsi-cold", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleCross,
		SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}, Op: contract.OpCrossesBelow, Value: ptr(30)}
	emaGolden = contract.Rule{ID: "ema-golden", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleCross,
		SeriesRef: contract.SeriesRef{Indicator: "ema_20"}, Op: contract.OpCrossesAbove, Other: &contract.SeriesRef{Indicator: "ema_50"}}
	price100k = contract.Rule{ID: "price-100k", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleThreshold,
		SeriesRef: contract.SeriesRef{Indicator: "price"}, Op: contract.OpAbove, Value: ptr(100_000)}
)

// rsiBar is bar i with RSI value rsi and close price close.
func rsiBar(i int, rsi, close float64) bar {
	return bar{i: i, close: close, values: map[string]contract.Fields{"rsi_14": {"value": rsi}}}
}

// id is the alert id of rule on bar i of user.
func id(user string, rule contract.Rule, i int) string {
	return contract.AlertID(user, rule.ID, base+int64(i)*3600)
}

func TestIndicatorUpdatesBecomeAlertsInTheStreamAndPostgres(t *testing.T) {
	e := newEnv(t)
	alice := userState("alice", 7, rsiHot, emaGolden, price100k)
	e.putState(alice)
	e.start("a")
	ema := func(fast, slow float64) map[string]contract.Fields {
		return map[string]contract.Fields{"ema_20": {"value": fast}, "ema_50": {"value": slow}}
	}
	bars := []bar{
		{i: 0, close: 99_000, values: ema(99, 100)},
		{i: 1, close: 99_500, values: ema(99.5, 100)},
		{i: 2, close: 100_500, values: ema(101, 100.5)},
		{i: 3, close: 101_000, values: ema(102, 101)},
		{i: 4, close: 99_999, values: ema(100, 101)},
		{i: 5, close: 100_000.5, values: ema(100.5, 101)},
	}
	for i, rsi := range []float64{65, 71.3, 72, 69, 70, 70.01} {
		bars[i].values["rsi_14"] = contract.Fields{"value": rsi}
	}
	// The last update carries a trace context, which the alerts continue.
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	traced := nats.Header{"traceparent": []string{"00-" + traceID + "-00f067aa0ba902b7-01"}}
	for _, b := range bars[:5] {
		e.closeBar(alice, b)
		e.settle()
	}
	e.closeBarAt(alice, bars[5], time.Unix(bars[5].start()+3600+1, 0), traced)

	type want struct {
		rule    contract.Rule
		bar     int
		message string
		value   float64
	}
	wants := []want{
		{rsiHot, 1, "BTC-USD 1h rsi_14 crossed above 70 (71.3)", 71.3},
		{emaGolden, 2, "BTC-USD 1h ema_20 crossed above ema_50 (101 vs 100.5)", 101},
		{price100k, 2, "BTC-USD 1h price rose above 100000 (100500)", 100_500},
		{rsiHot, 5, "BTC-USD 1h rsi_14 crossed above 70 (70.01)", 70.01},
		{price100k, 5, "BTC-USD 1h price rose above 100000 (100000.5)", 100_000.5},
	}
	var ids []string
	for _, w := range wants {
		ids = append(ids, id("alice", w.rule, w.bar))
	}
	inStream := e.waitAlerts(ids...)
	stored, err := e.storedAlerts()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range wants {
		wantID := id("alice", w.rule, w.bar)
		t.Run(wantID, func(t *testing.T) {
			start := bars[w.bar].start()
			expected := contract.Alert{ID: wantID, User: "alice", UserID: 7, ExchangeID: 17, RuleID: w.rule.ID, Kind: w.rule.Kind,
				Symbol: "BTC-USD", Timeframe: contract.TF1h, BarStart: start, Message: w.message, Value: w.value,
				FiredAt: time.Unix(start+3601, 0)}
			i := slices.IndexFunc(inStream, func(a streamAlert) bool { return a.ID == wantID })
			got := inStream[i]
			if !got.FiredAt.Equal(expected.FiredAt) {
				t.Errorf("fired_at %s, want %s", got.FiredAt, expected.FiredAt)
			}
			got.FiredAt = expected.FiredAt
			if got.Alert != expected {
				t.Errorf("stream alert\n got %+v\nwant %+v", got.Alert, expected)
			}
			if s := contract.AlertSubject("alice", w.rule.ID); got.subject != s {
				t.Errorf("subject %s, want %s", got.subject, s)
			}
			if h := got.header.Get(nats.MsgIdHdr); h != wantID {
				t.Errorf("Nats-Msg-Id %q, want %q", h, wantID)
			}
			tp := got.header.Get("traceparent")
			if traced := w.bar == 5; traced != strings.Contains(tp, traceID) {
				t.Errorf("traceparent %q: continues the update's trace %s = %v, want %v", tp, traceID, !traced, traced)
			}
			j := slices.IndexFunc(stored, func(s storedAlert) bool { return s.id == wantID })
			row := stored[j]
			if row.userID == nil || *row.userID != 7 || row.userToken != "alice" || row.ruleID != w.rule.ID || row.symbol != "BTC-USD" ||
				row.timeframe != "1h" || !row.barStart.Equal(time.Unix(start, 0)) {
				t.Errorf("alert_events row %+v does not match the alert", row)
			}
			row.payload.FiredAt = expected.FiredAt
			if row.payload != expected {
				t.Errorf("alert_events payload\n got %+v\nwant %+v", row.payload, expected)
			}
		})
	}
	e.settle()
	if n, err := e.counted.Sum("vigil.alerts.fired"); err != nil || n != int64(len(wants)) {
		t.Errorf("vigil.alerts.fired = %d (%v), want %d", n, err, len(wants))
	}
	if n, err := e.counted.Sum("vigil.alerts.evaluations"); err != nil || n != int64(len(bars)) {
		t.Errorf("vigil.alerts.evaluations = %d (%v), want %d", n, err, len(bars))
	}
}

func TestStaleValuesWarmUpAndGapsSuppressAlerts(t *testing.T) {
	e := newEnv(t)
	alice := userState("alice", 1, rsiHot)
	e.putState(alice)
	e.start("a")
	otherAccount := alice
	otherAccount.ExchangeID = 99
	steps := []struct {
		name string
		b    bar
		// age is how long after the bar's end it is evaluated (1s when 0).
		age time.Duration
		// st is the state whose series the bar is of (alice's when empty).
		st contract.DesiredState
	}{
		{name: "stale bar", b: rsiBar(0, 60, 1), age: 3 * time.Hour},
		{name: "stale crossing", b: rsiBar(1, 75, 1), age: 2*time.Hour + time.Second},
		{name: "warming", b: bar{i: 10, close: 1, warming: []string{"rsi_14"}}},
		{name: "first warm value, already above", b: rsiBar(11, 75, 1)},
		{name: "still above", b: rsiBar(12, 76, 1)},
		{name: "below", b: rsiBar(13, 60, 1)},
		{name: "crossing on another exchange account", b: rsiBar(14, 75, 1), st: otherAccount},
		{name: "crossing: fires", b: rsiBar(14, 75, 1)},
		{name: "below again", b: rsiBar(20, 60, 1)},
		{name: "crossing after a missing bar", b: rsiBar(22, 75, 1)},
		{name: "below once more", b: rsiBar(23, 60, 1)},
		{name: "crossing exactly two bars late: fires", b: rsiBar(24, 75, 1), age: 2 * time.Hour},
	}
	for _, s := range steps {
		age := s.age
		if age == 0 {
			age = time.Second
		}
		st := s.st
		if st.User == "" {
			st = alice
		}
		e.closeBarAt(st, s.b, time.Unix(s.b.start()+3600, 0).Add(age), nil)
		e.settle()
	}
	for _, a := range e.waitAlerts(id("alice", rsiHot, 14), id("alice", rsiHot, 24)) {
		if a.ExchangeID != alice.ExchangeID {
			t.Errorf("alert %s on exchange account %d, want %d", a.ID, a.ExchangeID, alice.ExchangeID)
		}
	}
}

func TestRedeliveredAndReplayedUpdatesFireNothingTwice(t *testing.T) {
	e := newEnv(t)
	alice := userState("alice", 1, rsiHot, price100k)
	e.putState(alice)
	first := e.start("a")
	var bars []bar
	for i, rsi := range []float64{60, 75, 60, 60, 75} {
		bars = append(bars, rsiBar(i, rsi, []float64{99_000, 100_500, 99_000, 99_500, 100_500}[i]))
	}
	var updates []contract.IndicatorUpdate
	for _, b := range bars {
		updates = append(updates, e.closeBar(alice, b))
		e.settle()
	}
	want := []string{id("alice", rsiHot, 1), id("alice", price100k, 1), id("alice", rsiHot, 4), id("alice", price100k, 4)}
	e.waitAlerts(want...)
	fired := func(in *instance) int64 { return in.monitor.Status()["alice"].AlertsFired }
	if n := fired(first); n != 4 {
		t.Fatalf("status alerts_fired = %d, want 4", n)
	}

	t.Run("published again with the same message ids", func(t *testing.T) {
		for _, u := range updates {
			e.publish(u, "", nil)
		}
		e.settle()
		e.waitAlerts(want...)
	})
	t.Run("published again under new message ids", func(t *testing.T) {
		for _, u := range updates {
			e.publish(u, ":again", nil)
		}
		e.settle()
		e.waitAlerts(want...)
		if n := fired(first); n != 4 {
			t.Fatalf("alerts_fired = %d after the replay, want 4", n)
		}
	})
	t.Run("restarted and replayed", func(t *testing.T) {
		e.stop(first)
		second := e.start("b")
		for _, u := range updates {
			e.publish(u, ":replay", nil)
		}
		e.settle()
		e.waitAlerts(want...)
		if s := second.monitor.Status()["alice"]; s.AlertsFired != 0 || s.Evaluations < int64(len(updates)) {
			t.Fatalf("restarted instance: %+v, want every replayed update evaluated and nothing fired", s)
		}
		e.stop(second)
	})
	t.Run("restarted without the engine memory", func(t *testing.T) {
		// Without memory the catch-up from Redis fires bar 4 again; its
		// ids are recorded already, so nothing changes.
		e.deleteSnapshot("alice")
		third := e.start("c")
		e.waitFor("the catch-up", func() (bool, error) {
			return third.monitor.Status()["alice"].Evaluations >= 2, nil
		})
		e.waitAlerts(want...)
		if n, err := e.counted.Sum("vigil.alerts.delivery.errors"); err != nil || n != 0 {
			t.Fatalf("delivery errors %d (%v)", n, err)
		}
		if n := fired(third); n != 0 {
			t.Fatalf("alerts_fired = %d, want 0: the repeats are not new", n)
		}
	})
	if n, err := e.counted.Sum("vigil.alerts.fired"); err != nil || n != 4 {
		t.Fatalf("vigil.alerts.fired = %d (%v), want 4 over all instances", n, err)
	}
}

func TestFailoverLosesAndDuplicatesNothing(t *testing.T) {
	e := newEnv(t)
	// Every user has a rule that fires on every bar after the first (a
	// reminder with a cooldown of one bar) and one that fires on every
	// second bar.
	reminder := contract.Rule{ID: "price-up", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleThreshold,
		SeriesRef: contract.SeriesRef{Indicator: "price"}, Op: contract.OpAbove, Value: ptr(0), Cooldown: "1h"}
	cross := contract.Rule{ID: "rsi-50", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleCross,
		SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}, Op: contract.OpCrossesAbove, Value: ptr(50)}
	users := []string{"alice", "bob", "carol", "dave", "erin", "frank"}
	var states []contract.DesiredState
	for i, u := range users {
		st := userState(u, int64(i+1), reminder, cross)
		states = append(states, st)
		e.putState(st)
	}
	a, b := e.start("a"), e.start("b")
	e.waitFor("both instances to see each other", func() (bool, error) {
		return len(a.group.Members()) == 2 && len(b.group.Members()) == 2, nil
	})
	barOf := func(i int) bar { return rsiBar(i, []float64{40, 60}[i%2], 100+float64(i)) }
	closeAll := func(i int) {
		for _, st := range states {
			e.closeBar(st, barOf(i))
		}
	}
	// The expected alerts are those of one engine per user that sees every
	// bar once, just after it closed.
	var want []string
	for _, st := range states {
		now := time.Time{}
		engine, err := rules.NewEngine([]contract.Rule{reminder, cross}, func() time.Time { return now })
		if err != nil {
			t.Fatal(err)
		}
		for i := range 9 {
			b := barOf(i)
			now = time.Unix(b.start()+3601, 0)
			for _, al := range engine.Evaluate(b.update(st, "BTC-USD")) {
				want = append(want, al.ID)
			}
		}
	}
	if len(want) != len(users)*(8+4) {
		t.Fatalf("reference engine fired %d alerts, want %d", len(want), len(users)*12)
	}
	for i := range 5 {
		closeAll(i)
		e.settle()
	}
	owned := func(in *instance) int {
		n := 0
		for _, u := range users {
			if in.consumer.OwnsKey(u) {
				n++
			}
		}
		return n
	}
	victim, survivor := a, b
	if owned(b) > owned(a) {
		victim, survivor = b, a
	}
	t.Logf("killing %s, which owns %d of %d users", victim.svc.ID(), owned(victim), len(users))
	// Bar 5 is in flight when the victim dies; bar 6 closes before the
	// survivor notices.
	closeAll(5)
	killed := time.Now()
	e.kill(victim)
	closeAll(6)
	e.waitFor("the survivor to take every user over", func() (bool, error) {
		return len(survivor.group.Members()) == 1 && len(survivor.monitor.Status()) == len(users), nil
	})
	t.Logf("took over %d users %s after the kill (heartbeat timeout 1.5s)", owned(survivor), time.Since(killed).Round(time.Millisecond))
	e.settle()
	for i := 7; i < 9; i++ {
		closeAll(i)
		e.settle()
	}
	e.waitAlerts(want...)
}

func TestWebhookIsSignedAndRetried(t *testing.T) {
	const secretVar, secret = "VIGIL_TEST_WEBHOOK_SECRET", "hook-secret-9f8e7d"
	t.Setenv(secretVar, secret)
	type request struct {
		body      []byte
		signature string
		alertID   string
	}
	var mu sync.Mutex
	var got []request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("read body: %v", err)
		}
		mu.Lock()
		got = append(got, request{body, r.Header.Get(webhook.SignatureHeader), r.Header.Get(webhook.AlertIDHeader)})
		first := len(got) == 1
		mu.Unlock()
		if first {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	t.Cleanup(srv.Close)
	e := newEnv(t)
	alice := userState("alice", 1, rsiHot)
	alice.Settings.Webhook = &contract.WebhookSettings{URL: srv.URL + "/hooks/vigil", SecretEnv: secretVar}
	e.putState(alice)
	e.start("a")
	e.closeBar(alice, rsiBar(0, 60, 1))
	e.closeBar(alice, rsiBar(1, 75, 1))
	alerts := e.waitAlerts(id("alice", rsiHot, 1))
	e.waitFor("the retried webhook", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 2, nil
	})
	mu.Lock()
	defer mu.Unlock()
	for i, r := range got {
		if !webhook.Verify([]byte(secret), r.body, r.signature) {
			t.Errorf("request %d: signature %q does not verify", i, r.signature)
		}
		if r.alertID != alerts[0].ID {
			t.Errorf("request %d: alert id header %q, want %q", i, r.alertID, alerts[0].ID)
		}
		var a contract.Alert
		if err := json.Unmarshal(r.body, &a); err != nil || !a.FiredAt.Equal(alerts[0].FiredAt) {
			t.Errorf("request %d: body %s (%v), want the alert", i, r.body, err)
		}
		a.FiredAt = alerts[0].FiredAt
		if a != alerts[0].Alert {
			t.Errorf("request %d: body %+v, want %+v", i, a, alerts[0].Alert)
		}
	}
	if n, err := e.counted.Sum("vigil.alerts.webhook.failures"); err != nil || n != 0 {
		t.Errorf("webhook failures %d (%v), want 0", n, err)
	}
	if n, err := e.counted.Sum("vigil.alerts.webhook.attempt.errors"); err != nil || n != 1 {
		t.Errorf("failed webhook attempts %d (%v), want 1", n, err)
	}
	e.waitFor("the status verb to show the delivery", func() (bool, error) {
		var s contract.AlertsStatus
		if err := json.Unmarshal(e.svcReplies(contract.VerbStatus, contract.SvcRequest{}, 1)[0].Result, &s); err != nil {
			return false, err
		}
		hook, ok := s.Webhooks["alice"]
		return ok && hook.Delivered == 1 && hook.Pending == 0 && !hook.Failing && hook.Host != "" &&
			s.Projection != nil && s.Projection.Pending == 0, nil
	})
	if strings.Contains(e.log.String(), secret) {
		t.Error("the webhook secret was logged")
	}
}

func TestControlVerbs(t *testing.T) {
	e := newEnv(t)
	alice := userState("alice", 1, rsiHot)
	e.putState(alice)
	a, b := e.start("a"), e.start("b")
	e.waitFor("both instances to see each other", func() (bool, error) {
		return len(a.group.Members()) == 2 && len(b.group.Members()) == 2, nil
	})
	// verb sends a request as control does (the desired state written
	// first) and checks that every instance answers, the owner with want.
	verb := func(v contract.Verb, st *contract.DesiredState, want ...string) contract.SvcReply {
		t.Helper()
		if st != nil {
			e.putState(*st)
		}
		replies := e.svcReplies(v, contract.SvcRequest{CommandID: "cmd-" + string(v), User: "alice", State: st}, 2)
		var owner *contract.SvcReply
		ids := map[string]bool{}
		for i, r := range replies {
			ids[r.Instance] = true
			if r.Service != contract.ServiceAlerts {
				t.Fatalf("%s: reply from service %q", v, r.Service)
			}
			var res contract.AlertsVerbResult
			if err := json.Unmarshal(r.Result, &res); r.OK && err != nil {
				t.Fatalf("%s: result %s: %v", v, r.Result, err)
			}
			if !r.OK || res.Owner {
				if owner != nil {
					t.Fatalf("%s: two owners answered: %+v", v, replies)
				}
				owner = &replies[i]
			} else if string(r.Result) != `{"owner":false}` {
				t.Fatalf("%s: non-owner answered %s", v, r.Result)
			}
		}
		if !ids[a.svc.ID()] || !ids[b.svc.ID()] {
			t.Fatalf("%s: replies %+v are not from both instances", v, replies)
		}
		if owner == nil {
			t.Fatalf("%s: no owner answered: %+v", v, replies)
		}
		if len(want) > 0 {
			var res contract.AlertsVerbResult
			if err := json.Unmarshal(owner.Result, &res); err != nil || !slices.Contains(want, res.Status) {
				t.Fatalf("%s: owner answered %s (%v), want status %v", v, owner.Result, err, want)
			}
		}
		return *owner
	}
	status := func() contract.AlertsUserStatus {
		t.Helper()
		replies := e.svcReplies(contract.VerbStatus, contract.SvcRequest{}, 2)
		var found []contract.AlertsUserStatus
		for _, r := range replies {
			var s struct {
				Members  []string                             `json:"members"`
				Consumer *contract.ConsumerBacklog            `json:"consumer"`
				Users    map[string]contract.AlertsUserStatus `json:"users"`
			}
			if err := json.Unmarshal(r.Result, &s); err != nil {
				t.Fatal(err)
			}
			if len(s.Members) != 2 || s.Consumer == nil {
				t.Fatalf("status of %s: %s, want both members and the consumer's backlog", r.Instance, r.Result)
			}
			if u, ok := s.Users["alice"]; ok {
				found = append(found, u)
			}
		}
		if len(found) != 1 {
			t.Fatalf("status: %d instances report alice, want 1", len(found))
		}
		return found[0]
	}

	paused, running := alice, alice
	paused.Paused = true
	e.closeBar(alice, rsiBar(0, 60, 1))
	e.settle()
	verb(contract.VerbPause, &paused, contract.AlertsPaused, contract.AlertsAlreadyPaused)
	verb(contract.VerbPause, &paused, contract.AlertsAlreadyPaused)
	if s := status(); !s.Paused || s.RulesLoaded != 1 || s.Evaluations != 1 || s.LastEvaluation == nil ||
		s.LastBar == nil || !s.LastBar.Equal(time.Unix(base, 0)) {
		t.Fatalf("status while paused: %+v", s)
	}
	// Not evaluated while paused: it would fire.
	e.closeBar(alice, rsiBar(1, 75, 1))
	e.settle()
	verb(contract.VerbResume, &running, contract.AlertsResumed, contract.AlertsAlreadyRunning)
	verb(contract.VerbResume, &running, contract.AlertsAlreadyRunning)
	e.closeBar(alice, rsiBar(2, 60, 1))
	e.closeBar(alice, rsiBar(3, 61, 1))
	e.settle()
	// A pause and resume between bars 3 and 4: bar 4 would cross over
	// bar 3, a value seen before the pause, so it must not fire.
	verb(contract.VerbPause, &paused, contract.AlertsPaused, contract.AlertsAlreadyPaused)
	verb(contract.VerbResume, &running, contract.AlertsResumed, contract.AlertsAlreadyRunning)
	e.closeBar(alice, rsiBar(4, 75, 1))
	e.closeBar(alice, rsiBar(5, 60, 1))
	e.closeBar(alice, rsiBar(6, 75, 1))
	e.waitAlerts(id("alice", rsiHot, 6))

	// apply: a new rule set of the mode, then an invalid one.
	applied := running
	applied.Revision = 2
	applied.Settings.Rules = map[contract.Mode][]contract.Rule{contract.ModePositionMonitor: {rsiHot, rsiCold}}
	if r := verb(contract.VerbApply, &applied, contract.AlertsApplied); !strings.Contains(string(r.Result), `"rules":2`) || !strings.Contains(string(r.Result), `"revision":2`) {
		t.Fatalf("apply: %s", r.Result)
	}
	invalid := applied
	invalid.Revision = 3
	bad := contract.Rule{ID: "bad", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: "bogus", SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}}
	invalid.Settings.Rules = map[contract.Mode][]contract.Rule{contract.ModePositionMonitor: {rsiHot, bad}}
	r := e.svcReplies(contract.VerbApply, contract.SvcRequest{User: "alice", State: &invalid}, 2)
	var rejected []contract.SvcReply
	for _, reply := range r {
		if !reply.OK {
			rejected = append(rejected, reply)
		}
	}
	if len(rejected) != 1 || rejected[0].Error.Code != contract.CodeInvalidPayload ||
		!slices.ContainsFunc(rejected[0].Error.Fields, func(f contract.FieldError) bool { return f.Field == "rules[1](bad).kind" }) {
		t.Fatalf("invalid apply: replies %+v, want the owner's invalid_payload naming rules[1](bad).kind", r)
	}
	if s := status(); s.RulesLoaded != 2 || s.Revision != 2 || s.Paused || s.AlertsFired != 1 {
		t.Fatalf("status after the rejected apply: %+v, want revision 2 with 2 rules", s)
	}
	// The running rules still fire: rsi-cold, new in revision 2, needs a
	// bar of its own first, then crosses below 30.
	e.closeBar(alice, rsiBar(7, 35, 1))
	e.closeBar(alice, rsiBar(8, 25, 1))
	e.waitAlerts(id("alice", rsiHot, 6), id("alice", rsiCold, 8))
	if s := status(); s.AlertsFired != 2 {
		t.Fatalf("status: alerts_fired %d, want 2", s.AlertsFired)
	}
	// A verb without a user is rejected by every instance.
	for _, reply := range e.svcReplies(contract.VerbPause, contract.SvcRequest{}, 2) {
		if reply.OK || reply.Error.Code != contract.CodeInvalidPayload {
			t.Fatalf("pause without a user: %+v", reply)
		}
	}
	if n, err := e.counted.Sum("vigil.alerts.fired", attribute.String("kind", string(contract.RuleCross))); err != nil || n != 2 {
		t.Fatalf("vigil.alerts.fired{kind=cross} = %d (%v), want 2", n, err)
	}
}

func TestRecordingIsRetriedInOrderUntilTheStreamIsBack(t *testing.T) {
	e := newEnv(t)
	alice := userState("alice", 1, rsiHot)
	e.putState(alice)
	in := e.start("a")
	e.closeBar(alice, rsiBar(0, 60, 1))
	e.settle()
	ctx := context.Background()
	if err := e.js.DeleteStream(ctx, contract.StreamAlerts); err != nil {
		t.Fatal(err)
	}
	// Bar 1 fires while the stream is gone; bars 2 and 3 wait behind it,
	// and bar 3 fires once bar 2 has been seen.
	e.closeBar(alice, rsiBar(1, 75, 1))
	e.waitFor("failed attempts to record the alert", func() (bool, error) {
		n, err := e.counted.Sum("vigil.alerts.delivery.errors")
		return n >= 3, err
	})
	e.closeBar(alice, rsiBar(2, 60, 1))
	e.closeBar(alice, rsiBar(3, 75, 1))
	began := time.Now()
	if s := in.monitor.Status()["alice"]; s.AlertsFired != 0 || time.Since(began) > time.Second {
		t.Fatalf("status while recording is retried: %+v after %s", s, time.Since(began))
	}
	if err := natsx.EnsureStreams(ctx, e.js); err != nil {
		t.Fatal(err)
	}
	e.waitAlerts(id("alice", rsiHot, 1), id("alice", rsiHot, 3))
	e.settle()
	if s := in.monitor.Status()["alice"]; s.AlertsFired != 2 || s.Evaluations != 4 {
		t.Fatalf("status: %+v, want 4 evaluations and 2 alerts", s)
	}
}

// coreAlerts counts the alert ids that core subscribers of vigil.alert.>
// receive.
type coreAlerts struct {
	mu  sync.Mutex
	ids []string
}

func (e *env) subscribeAlerts() *coreAlerts {
	e.t.Helper()
	c := &coreAlerts{}
	sub, err := e.nc.Subscribe(contract.AlertSubjects, func(m *nats.Msg) {
		var a contract.Alert
		if err := json.Unmarshal(m.Data, &a); err != nil {
			e.t.Errorf("core alert %s: %v", m.Subject, err)
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.ids = append(c.ids, a.ID)
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := e.nc.Flush(); err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (c *coreAlerts) get() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ids)
}

// TestAlertsFireWhilePostgresIsDown stops Postgres while alerts fire:
// recording does not wait for it, core subscribers and the stream get each
// alert id once at once, and alert_events catches up once Postgres is back.
func TestAlertsFireWhilePostgresIsDown(t *testing.T) {
	pg := testenv.StartPostgresServer(t)
	e := newEnvOn(t, pg.URL())
	core := e.subscribeAlerts()
	var states []contract.DesiredState
	for i, user := range []string{"alice", "bob"} {
		st := userState(user, int64(i+1), rsiHot, price100k)
		states = append(states, st)
		e.putState(st)
	}
	in := e.start("a")
	for _, st := range states {
		e.closeBar(st, rsiBar(0, 60, 99_000))
	}
	e.settle()
	pg.Stop()
	var want []string
	for i := 1; i <= 6; i++ { // rsi and price alternate: every odd bar fires both rules
		rsi, price := 60.0, 99_000.0
		if i%2 == 1 {
			rsi, price = 75, 100_500
		}
		for _, st := range states {
			e.closeBar(st, rsiBar(i, rsi, price))
			if i%2 == 1 {
				want = append(want, id(st.User, rsiHot, i), id(st.User, price100k, i))
			}
		}
		e.settle() // each bar is evaluated at its own time
	}
	e.settle() // nothing waits for Postgres
	for _, st := range states {
		if s := in.monitor.Status()[st.User]; s.AlertsFired != 6 {
			t.Errorf("%s: status %+v while Postgres is down, want 6 alerts fired", st.User, s)
		}
	}
	e.waitFor("the alerts on the core subject", func() (bool, error) { return len(core.get()) >= len(want), nil })
	stream, err := e.streamAlerts()
	if err != nil {
		t.Fatal(err)
	}
	var streamIDs []string
	for _, a := range stream {
		streamIDs = append(streamIDs, a.ID)
	}
	sorted := slices.Sorted(slices.Values(want))
	if got := slices.Sorted(slices.Values(streamIDs)); !slices.Equal(got, sorted) {
		t.Errorf("stream holds %v, want %v", got, sorted)
	}
	pg.Start()
	e.waitAlerts(want...)
	if got := slices.Sorted(slices.Values(core.get())); !slices.Equal(got, sorted) {
		t.Errorf("core subscribers saw %v, want each of %v once", got, sorted)
	}
}

func TestDesiredStateConverges(t *testing.T) {
	e := newEnv(t)
	alice := userState("alice", 1, rsiHot)
	e.putState(alice)
	in := e.start("a")
	waitStatus := func(what string, cond func(s contract.AlertsUserStatus, ok bool) bool) {
		t.Helper()
		e.waitFor(what, func() (bool, error) {
			s, ok := in.monitor.Status()["alice"]
			return cond(s, ok), nil
		})
	}
	e.closeBar(alice, rsiBar(0, 60, 1))
	e.settle()
	paused := alice
	paused.Paused = true
	e.putState(paused)
	waitStatus("alice paused", func(s contract.AlertsUserStatus, _ bool) bool { return s.Paused })
	e.closeBar(alice, rsiBar(1, 75, 1)) // not evaluated
	e.settle()
	e.putState(alice)
	waitStatus("alice running", func(s contract.AlertsUserStatus, _ bool) bool { return !s.Paused })
	e.closeBar(alice, rsiBar(2, 60, 1))
	e.closeBar(alice, rsiBar(3, 75, 1))
	e.waitAlerts(id("alice", rsiHot, 3))

	revised := alice
	revised.Revision = 2
	revised.Settings.Rules = map[contract.Mode][]contract.Rule{contract.ModePositionMonitor: {rsiHot, rsiCold}}
	e.putState(revised)
	waitStatus("revision 2", func(s contract.AlertsUserStatus, _ bool) bool { return s.Revision == 2 && s.RulesLoaded == 2 })

	switched := revised
	switched.Mode, switched.Settings.Mode = contract.ModeScalperMACDV, contract.ModeScalperMACDV
	switched.Settings.Rules[contract.ModeScalperMACDV] = []contract.Rule{{ID: "macdv-hot", Symbol: "BTC-USD", Timeframe: contract.TF1m,
		Kind: contract.RuleMACDVZone, SeriesRef: contract.SeriesRef{Indicator: "macdv_12_26_9"}, Zone: contract.ZoneOverbought}}
	e.putState(switched)
	waitStatus("scalper-macdv rules", func(s contract.AlertsUserStatus, _ bool) bool {
		return s.Mode == contract.ModeScalperMACDV && s.RulesLoaded == 1
	})

	kv, err := e.js.KeyValue(context.Background(), contract.BucketState)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(context.Background(), contract.StateKey("alice")); err != nil {
		t.Fatal(err)
	}
	waitStatus("alice forgotten", func(_ contract.AlertsUserStatus, ok bool) bool { return !ok })
	e.closeBar(alice, rsiBar(4, 60, 1))
	e.closeBar(alice, rsiBar(5, 75, 1)) // alice is unknown now: acknowledged, not evaluated
	e.settle()
	e.waitAlerts(id("alice", rsiHot, 3))
}

func TestABatchLeftHalfRecordedByAKilledInstanceIsRecordedOnceByItsSuccessor(t *testing.T) {
	e := newEnv(t)
	core := e.subscribeAlerts()
	var states []contract.DesiredState
	var want []string
	for i, user := range []string{"alice", "bob", "carol"} {
		st := userState(user, int64(i+1), rsiHot, price100k)
		states = append(states, st)
		e.putState(st)
		want = append(want, id(user, rsiHot, 1), id(user, price100k, 1))
	}
	first := e.start("a")
	for _, st := range states {
		e.closeBar(st, rsiBar(0, 60, 99_000))
	}
	e.settle()
	ctx := context.Background()
	// The stream takes 3 alerts and refuses more, so the batches are
	// retried until the instance dies.
	full := natsx.AlertsStream
	full.MaxMsgs, full.Discard = 3, jetstream.DiscardNew
	if _, err := e.js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	for _, st := range states {
		e.closeBar(st, rsiBar(1, 75, 100_500))
	}
	e.waitFor("failed attempts to record the alerts", func() (bool, error) {
		n, err := e.counted.Sum("vigil.alerts.delivery.errors")
		return n >= 2, err
	})
	e.kill(first)
	stored, err := e.streamAlerts()
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 3 {
		t.Fatalf("the full stream holds %d alerts, want 3", len(stored))
	}
	if err := natsx.EnsureStreams(ctx, e.js); err != nil {
		t.Fatal(err)
	}
	// The successor gains the users once the victim's heartbeats stop and
	// catches up from Redis: bar 1 fires again with the same alert ids.
	e.start("b")
	e.waitAlerts(want...)
	e.settle()
	e.waitFor("the alerts on the core subject", func() (bool, error) { return len(core.get()) >= len(want), nil })
	if got, sorted := slices.Sorted(slices.Values(core.get())), slices.Sorted(slices.Values(want)); !slices.Equal(got, sorted) {
		t.Errorf("core subscribers saw %v, want each of %v once", got, sorted)
	}
	// Each instance counts the alerts it stored in a batch that succeeded:
	// those of the victim's failing batch are counted by nobody.
	if n, err := e.counted.Sum("vigil.alerts.fired"); err != nil || n < int64(len(want)-len(stored)) || n > int64(len(want)) {
		t.Fatalf("vigil.alerts.fired = %d (%v), want %d..%d", n, err, len(want)-len(stored), len(want))
	}
}
