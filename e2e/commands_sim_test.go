package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/testenv"
)

// Users of TestCommandsSim, one (or two) per scenario so that the
// scenarios run in parallel on one stack.
const (
	pauseUser    = "pr-target"
	bystander    = "pr-other"
	reloadUser   = "reload"
	switchUser   = "switch"
	cacheUser    = "cache"
	dupUser      = "dup"
	priorityUser = "prio"
)

// liveAlertSettings watch BTC-USD in scalper-macdv with a live price rule
// that always holds and reminds every 1m bar, so the user's alerts fire
// about once a wall second on the simulator (a sim minute is a second).
const liveAlertSettings = `{"mode":"scalper-macdv","symbols":["BTC-USD"],"rules":{"scalper-macdv":[
	{"id":"price-live","symbol":"BTC-USD","timeframe":"1m","kind":"threshold","indicator":"price","op":"above","value":1,"evaluate":"live","cooldown":"1m"}]}}`

// switchSettings have rules in every mode: 1 in position-monitor, 2 in
// scalper-macdv (1m and 5m), 3 in scalper-orderbook.
const switchSettings = `{"mode":"position-monitor","symbols":["BTC-USD"],"rules":{
	"position-monitor":[
		{"id":"pm-price","symbol":"BTC-USD","timeframe":"1h","kind":"threshold","indicator":"price","op":"above","value":1}],
	"scalper-macdv":[
		{"id":"mv-zone","symbol":"BTC-USD","timeframe":"1m","kind":"macdv_zone","indicator":"macdv_12_26_9"},
		{"id":"mv-cross","symbol":"BTC-USD","timeframe":"5m","kind":"cross","indicator":"macdv_12_26_9","field":"macd","op":"crosses_above","other":{"indicator":"macdv_12_26_9","field":"signal"}}],
	"scalper-orderbook":[
		{"id":"ob-imbalance","symbol":"BTC-USD","timeframe":"1m","kind":"orderbook","indicator":"ob_imbalance","op":"above","value":0.5},
		{"id":"ob-spread","symbol":"BTC-USD","timeframe":"1m","kind":"orderbook","indicator":"ob_spread","op":"above","value":50},
		{"id":"ob-depth","symbol":"BTC-USD","timeframe":"1m","kind":"orderbook","indicator":"ob_depth","field":"bid","op":"above","value":1000}]}}`

// TestCommandsSim runs the operator commands end to end against one
// instance of each real service on the simulator: pause/resume, reload of
// settings, mode switches, clear-cache, duplicate ids, priority and dry
// runs. Each scenario has users of its own and runs in parallel with the
// others.
func TestCommandsSim(t *testing.T) {
	s := newCmdStack(t, "VIGIL_FEED_SOURCE=sim")
	btc := `{"mode":"position-monitor","symbols":["BTC-USD"]}`
	s.seed(t, pauseUser, liveAlertSettings)
	s.seed(t, bystander, liveAlertSettings)
	s.seed(t, reloadUser, btc)
	s.seed(t, switchUser, switchSettings)
	_, extra := s.seed(t, cacheUser, `{"mode":"position-monitor","symbols":["BTC-USD","ETH-USD"]}`, "kraken")
	s.seed(t, dupUser, btc)
	s.seed(t, priorityUser, btc)
	s.seed(t, planUser, switchSettings)
	began := time.Now()
	s.startAll(t, 1, pauseUser, bystander, reloadUser, switchUser, cacheUser, dupUser, priorityUser, planUser)
	t.Logf("services up and desired states written in %v", time.Since(began).Round(time.Millisecond))

	t.Run("pause-resume", func(t *testing.T) { t.Parallel(); testPauseResume(t, s) })
	t.Run("reload-settings", func(t *testing.T) { t.Parallel(); testReloadSettings(t, s) })
	t.Run("switch-mode", func(t *testing.T) { t.Parallel(); testSwitchMode(t, s) })
	t.Run("clear-cache", func(t *testing.T) { t.Parallel(); testClearCache(t, s, extra[0]) })
	t.Run("duplicate-ids", func(t *testing.T) { t.Parallel(); testDuplicateIDs(t, s) })
	t.Run("priority", func(t *testing.T) { t.Parallel(); testPriority(t, s) })
	t.Run("dry-run", func(t *testing.T) { t.Parallel(); testDryRun(t, s) })
}

// streamSeqs are the last sequences of the data streams at one moment.
type streamSeqs struct{ candles, indicators, alerts uint64 }

func (s *cmdStack) seqs(t *testing.T) streamSeqs {
	t.Helper()
	return streamSeqs{s.lastSeq(t, contract.StreamCandles), s.lastSeq(t, contract.StreamIndicators), s.lastSeq(t, contract.StreamAlerts)}
}

// flowCounts are how many candles, indicator updates and alerts of user
// were published after seqs.
func (s *cmdStack) flowCounts(t *testing.T, user string, after streamSeqs) [3]int {
	t.Helper()
	return [3]int{
		s.count(t, contract.StreamCandles, "vigil.candle."+user+".>", after.candles),
		s.count(t, contract.StreamIndicators, "vigil.indicator."+user+".>", after.indicators),
		s.count(t, contract.StreamAlerts, "vigil.alert."+user+".>", after.alerts),
	}
}

// flowing reports whether user got candles, indicator updates and alerts
// after seqs.
func (s *cmdStack) flowing(t *testing.T, user string, after streamSeqs) bool {
	t.Helper()
	n := s.flowCounts(t, user, after)
	return n[0] > 0 && n[1] > 0 && n[2] > 0
}

// userKeys are the Redis key patterns of a user's candles and indicators.
func userKeys(a account) []string {
	return []string{"candles:" + itoa(a.UserID) + ":*", "indicator:" + itoa(a.UserID) + ":*"}
}

// testPauseResume: after pause nothing of the user's is published or
// written while another user's data keeps flowing; after resume data flows
// again and the stored bars have no gap over the pause; both commands are
// idempotent.
func testPauseResume(t *testing.T, s *cmdStack) {
	target, other := s.account(t, pauseUser), s.account(t, bystander)
	otherBars := other.series(bystander, "BTC-USD", contract.TF1m)
	testenv.WaitFor(t, 60*time.Second, "candles, indicator updates and alerts of both users", func() bool {
		return s.flowing(t, pauseUser, streamSeqs{}) && s.flowing(t, bystander, streamSeqs{})
	})

	res := s.run(t, pauseUser, contract.CmdPause, "{}")
	paused := s.seqs(t)
	if status := resultAs[contract.PauseResult](t, res); status.Status != contract.ResultPaused {
		t.Errorf("pause result %s, want status paused", res.Result)
	}
	checkSteps(t, res, 1, "vigil-alerts pause", "vigil-feed pause", "vigil-indicators pause")
	if st, _, _ := s.state(pauseUser); !st.Paused {
		t.Errorf("desired state after pause: %+v, want paused", st)
	}
	stored := s.snapshot(t, userKeys(target))
	lastBefore := map[contract.Timeframe]contract.Candle{}
	for _, tf := range contract.Timeframes {
		lastBefore[tf] = s.lastCandle(t, target.series(pauseUser, "BTC-USD", tf))
	}
	otherLast := s.lastCandle(t, otherBars)

	again := s.run(t, pauseUser, contract.CmdPause, "{}")
	if status := resultAs[contract.PauseResult](t, again); status.Status != contract.ResultAlreadyPaused || len(again.Steps) != 0 {
		t.Errorf("second pause: result %s with %d steps, want already_paused and no steps", again.Result, len(again.Steps))
	}

	// The other user's candles, indicators and alerts keep flowing...
	testenv.WaitFor(t, 30*time.Second, "3 more 1m bars, indicator updates and alerts of "+bystander, func() bool {
		return s.lastCandle(t, otherBars).Start >= otherLast.Start+3*60 && s.flowing(t, bystander, paused)
	})
	// ...while nothing of the paused user's is published or written.
	for i, filter := range []string{"vigil.candle.", "vigil.indicator.", "vigil.alert."} {
		if n := s.flowCounts(t, pauseUser, paused)[i]; n != 0 {
			t.Errorf("%d messages on %s%s.> after the pause's result", n, filter, pauseUser)
		}
	}
	if d := diffSnapshots(stored, s.snapshot(t, userKeys(target))); d != "" {
		t.Errorf("Redis keys of the paused user changed: %s", d)
	}
	for _, r := range s.svcStatus(t, "feed", "", 1) {
		var u struct {
			Owner      bool     `json:"owner"`
			Paused     bool     `json:"paused"`
			Subscribed []string `json:"subscribed"`
		}
		if userStatus(r, pauseUser, &u) && u.Owner && (!u.Paused || len(u.Subscribed) != 0) {
			t.Errorf("feed status of the paused user: %+v, want paused with nothing subscribed", u)
		}
	}

	res = s.run(t, pauseUser, contract.CmdResume, "{}")
	resumed := s.seqs(t)
	resume := resultAs[contract.ResumeResult](t, res)
	// The pause lasted 3 bars of the other user, so at least the 2 bars
	// between the last one stored before the pause and the one in
	// progress have closed since (gap_filled counts closed bars after the
	// last stored one).
	if resume.Status != contract.ResultResumed || !slices.Equal(resume.Symbols, []string{"BTC-USD"}) || resume.GapFilled == nil || (*resume.GapFilled)["BTC-USD"][contract.TF1m] < 2 {
		t.Errorf("resume result %s, want resumed, symbols [BTC-USD] and at least 2 closed 1m bars of the pause gap-filled", res.Result)
	}
	checkSteps(t, res, 1, "vigil-indicators resume", "vigil-feed resume", "vigil-alerts resume")
	again = s.run(t, pauseUser, contract.CmdResume, "{}")
	if status := resultAs[contract.ResumeResult](t, again); status.Status != contract.ResultAlreadyRunning || len(again.Steps) != 0 {
		t.Errorf("second resume: result %s with %d steps, want already_running and no steps", again.Result, len(again.Steps))
	}

	// Data flows again, and the bars over the pause have no gap.
	bars := target.series(pauseUser, "BTC-USD", contract.TF1m)
	afterResume := s.lastCandle(t, bars)
	testenv.WaitFor(t, 30*time.Second, "2 more 1m bars, indicator updates and alerts of "+pauseUser+" after resume", func() bool {
		return s.lastCandle(t, bars).Start >= afterResume.Start+2*60 && s.flowing(t, pauseUser, resumed)
	})
	for _, tf := range contract.Timeframes {
		from := lastBefore[tf].Start - 5*int64(tf.Duration()/time.Second)
		cs := since(s.candles(t, target.series(pauseUser, "BTC-USD", tf)), from)
		if gap := consecutive(cs, tf); gap != "" {
			t.Errorf("%s bars of %s have a gap over the pause: %s", tf, pauseUser, gap)
		}
		if len(cs) == 0 || cs[len(cs)-1].Start < lastBefore[tf].Start {
			t.Errorf("%s bars of %s end before the pause", tf, pauseUser)
		}
	}
}

// testReloadSettings: reload-settings adds and removes symbols live, and
// invalid settings fail with field errors and change nothing.
func testReloadSettings(t *testing.T, s *cmdStack) {
	a := s.account(t, reloadUser)
	btc, sol := a.series(reloadUser, "BTC-USD", contract.TF1m), a.series(reloadUser, "SOL-USD", contract.TF1m)
	testenv.WaitFor(t, 60*time.Second, "BTC-USD bars of "+reloadUser, func() bool { return s.lastCandle(t, btc).Start > 0 })
	before, _, _ := s.state(reloadUser)

	check := func(t *testing.T, res contract.Result, revision int64, added, removed, symbols []string) {
		t.Helper()
		r := resultAs[contract.ReloadSettingsResult](t, res)
		if !r.Reloaded || r.Revision != revision || !slices.Equal(r.Changes.Symbols.Added, added) || !slices.Equal(r.Changes.Symbols.Removed, removed) {
			t.Errorf("reload result %s, want revision %d, added %q, removed %q", res.Result, revision, added, removed)
		}
		checkSteps(t, res, 1, "vigil-feed apply", "vigil-indicators apply", "vigil-alerts apply")
		if st, _, _ := s.state(reloadUser); st.Revision != revision || !slices.Equal(st.Symbols, symbols) {
			t.Errorf("desired state after reload: revision %d symbols %q, want %d %q", st.Revision, st.Symbols, revision, symbols)
		}
	}

	t.Run("add", func(t *testing.T) {
		s.setSettings(t, reloadUser, `{"mode":"position-monitor","symbols":["BTC-USD","SOL-USD"]}`)
		res := s.run(t, reloadUser, contract.CmdReloadSettings, "{}")
		check(t, res, before.Revision+1, []string{"SOL-USD"}, []string{}, []string{"BTC-USD", "SOL-USD"})
		sol1h := a.series(reloadUser, "SOL-USD", contract.TF1h)
		testenv.WaitFor(t, 30*time.Second, "SOL-USD candles and indicators of "+reloadUser, func() bool {
			return s.lastCandle(t, sol).Start > 0 && len(s.indicator(t, sol1h, "rsi_14")) > 0 &&
				s.count(t, contract.StreamCandles, "vigil.candle."+reloadUser+".*.SOL-USD.1m", 0) > 0
		})
	})

	t.Run("remove", func(t *testing.T) {
		s.setSettings(t, reloadUser, `{"mode":"position-monitor","symbols":["SOL-USD"]}`)
		res := s.run(t, reloadUser, contract.CmdReloadSettings, "{}")
		after := s.seqs(t)
		check(t, res, before.Revision+2, []string{}, []string{"BTC-USD"}, []string{"SOL-USD"})
		btcKeys := []string{"candles:" + itoa(a.UserID) + ":" + itoa(a.ExchangeID) + ":BTC-USD:*", "indicator:" + itoa(a.UserID) + ":" + itoa(a.ExchangeID) + ":BTC-USD:*"}
		stored := s.snapshot(t, btcKeys)
		solLast := s.lastCandle(t, sol)
		testenv.WaitFor(t, 30*time.Second, "3 more SOL-USD 1m bars", func() bool { return s.lastCandle(t, sol).Start >= solLast.Start+3*60 })
		if n := s.count(t, contract.StreamCandles, "vigil.candle."+reloadUser+".*.BTC-USD.*", after.candles); n != 0 {
			t.Errorf("%d BTC-USD candles published after BTC-USD was removed", n)
		}
		if n := s.count(t, contract.StreamIndicators, "vigil.indicator."+reloadUser+".*.BTC-USD.*", after.indicators); n != 0 {
			t.Errorf("%d BTC-USD indicator updates published after BTC-USD was removed", n)
		}
		if n := s.count(t, contract.StreamCandles, "vigil.candle."+reloadUser+".*.SOL-USD.*", after.candles); n == 0 {
			t.Errorf("no SOL-USD candles after BTC-USD was removed")
		}
		if d := diffSnapshots(stored, s.snapshot(t, btcKeys)); d != "" {
			t.Errorf("BTC-USD keys written after BTC-USD was removed: %s", d)
		}
	})

	t.Run("invalid", func(t *testing.T) {
		rev, value := s.stateEntry(t, reloadUser)
		s.setSettings(t, reloadUser, `{"mode":"position-monitor","symbols":["SOL-USD","sol usd"],"indicators":{"rsi":5000}}`)
		ack := s.accept(t, reloadUser, contract.CmdReloadSettings, "{}")
		res := s.waitResult(t, reloadUser, ack.ID, 30*time.Second)
		if res.Status != contract.StatusFailed || res.Error == nil || res.Error.Code != contract.CodeInvalidPayload {
			t.Fatalf("reload of invalid settings: %s, want failed with invalid_payload", resultString(res))
		}
		var fields []string
		for _, f := range res.Error.Fields {
			fields = append(fields, f.Field)
		}
		for _, want := range []string{"symbols[1]", "indicators.rsi"} {
			if !slices.Contains(fields, want) {
				t.Errorf("error fields %q lack %s: %s", fields, want, resultString(res))
			}
		}
		if len(res.Steps) != 0 {
			t.Errorf("invalid settings ran steps: %s", resultString(res))
		}
		if rev2, value2 := s.stateEntry(t, reloadUser); rev2 != rev || value2 != value {
			t.Errorf("KV %s of %s changed by the failed reload: revision %d → %d\n%s\n%s", contract.BucketState, reloadUser, rev, rev2, value, value2)
		}
	})
}

// tapMessages records, in arrival order, every message on subjects; the
// subscriptions share one channel, so the order is the connection's.
type tapMessages struct {
	mu   sync.Mutex
	msgs []*nats.Msg
}

func tap(t *testing.T, nc *nats.Conn, subjects ...string) *tapMessages {
	t.Helper()
	tm := &tapMessages{}
	ch := make(chan *nats.Msg, 4096)
	for _, subj := range subjects {
		sub, err := nc.ChanSubscribe(subj, ch)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			select {
			case m := <-ch:
				tm.mu.Lock()
				tm.msgs = append(tm.msgs, m)
				tm.mu.Unlock()
			case <-done:
				return
			}
		}
	}()
	return tm
}

// after returns the messages on subjects with prefix that arrived after the
// message on subject mark (all of them when mark is ""), and whether mark
// arrived.
func (tm *tapMessages) after(mark, prefix string) ([]*nats.Msg, bool) {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	seen := mark == ""
	var out []*nats.Msg
	for _, m := range tm.msgs {
		if !seen {
			seen = m.Subject == mark
			continue
		}
		if strings.HasPrefix(m.Subject, prefix) {
			out = append(out, m)
		}
	}
	return out, seen
}

// testSwitchMode: switch-mode changes the feed's channels (level2 books
// only in scalper-orderbook), the indicator set and timeframes, and the
// alert rules; the same mode again is already_in_mode.
func testSwitchMode(t *testing.T, s *cmdStack) {
	a := s.account(t, switchUser)
	bars := a.series(switchUser, "BTC-USD", contract.TF1m)
	messages := tap(t, s.Conn(), contract.BookSubject(switchUser, a.ExchangeID, ">"), "vigil.result."+switchUser+".>")
	bookPrefix := "vigil.book." + switchUser + "."
	testenv.WaitFor(t, 60*time.Second, "BTC-USD bars of "+switchUser, func() bool { return s.lastCandle(t, bars).Start > 0 })
	checkAlerts := func(t *testing.T, mode contract.Mode, rules int) {
		t.Helper()
		st, _, _ := s.state(switchUser)
		var found bool
		for _, r := range s.svcStatus(t, "alerts", "", 1) {
			var u struct {
				Mode        contract.Mode `json:"mode"`
				Revision    int64         `json:"revision"`
				RulesLoaded int           `json:"rules_loaded"`
				RulesError  string        `json:"rules_error"`
			}
			if userStatus(r, switchUser, &u) {
				found = true
				if u.Mode != mode || u.RulesLoaded != rules || u.Revision != st.Revision || u.RulesError != "" {
					t.Errorf("alerts status of %s: %+v, want mode %s with %d rules at revision %d", switchUser, u, mode, rules, st.Revision)
				}
			}
		}
		if !found {
			t.Errorf("no alerts instance reports %s", switchUser)
		}
	}
	checkAlerts(t, contract.ModePositionMonitor, 1)
	switchTo := func(t *testing.T, from, to contract.Mode) contract.Result {
		t.Helper()
		res := s.run(t, switchUser, contract.CmdSwitchMode, fmt.Sprintf(`{"mode":%q}`, to))
		r := resultAs[contract.SwitchModeResult](t, res)
		if !r.Switched || r.From != from || r.To != to {
			t.Errorf("switch-mode result %s, want switched from %s to %s", res.Result, from, to)
		}
		checkSteps(t, res, 1, "vigil-alerts pause", "vigil-feed apply", "vigil-indicators apply", "vigil-alerts apply", "vigil-alerts resume")
		if st, _, _ := s.state(switchUser); st.Mode != to || st.Settings.Mode != to {
			t.Errorf("desired state mode %s (settings %s), want %s", st.Mode, st.Settings.Mode, to)
		}
		return res
	}
	points := func(t *testing.T, tf contract.Timeframe, name string) int {
		return len(s.indicator(t, a.series(switchUser, "BTC-USD", tf), name))
	}

	t.Run("scalper-orderbook", func(t *testing.T) {
		if books, _ := messages.after("", bookPrefix); len(books) != 0 {
			t.Fatalf("%d book snapshots of %s in position-monitor", len(books), switchUser)
		}
		switchTo(t, contract.ModePositionMonitor, contract.ModeScalperOrderbook)
		checkAlerts(t, contract.ModeScalperOrderbook, 3)
		testenv.WaitFor(t, 30*time.Second, "book snapshots and ob_* indicators of "+switchUser, func() bool {
			books, _ := messages.after("", bookPrefix)
			return len(books) >= 2 && points(t, contract.TF1m, "ob_imbalance") > 0 && points(t, contract.TF1m, "ob_spread") > 0 && points(t, contract.TF1m, "ob_depth") > 0
		})
		books, _ := messages.after("", bookPrefix)
		var b contract.BookSnapshot
		if err := json.Unmarshal(books[len(books)-1].Data, &b); err != nil || b.Validate() != nil || b.User != switchUser || b.Symbol != "BTC-USD" || len(b.Bids) == 0 || len(b.Asks) == 0 {
			t.Errorf("book snapshot %s (%v), want a valid two-sided BTC-USD book of %s", books[len(books)-1].Data, err, switchUser)
		}
		for _, p := range s.indicator(t, bars, "ob_imbalance") {
			if v := p.Fields["value"]; v < -1 || v > 1 {
				t.Errorf("ob_imbalance %v at %d is outside [-1, 1]", v, p.Start)
			}
		}
	})

	t.Run("scalper-macdv", func(t *testing.T) {
		res := switchTo(t, contract.ModeScalperOrderbook, contract.ModeScalperMACDV)
		checkAlerts(t, contract.ModeScalperMACDV, 2)
		last := s.lastCandle(t, bars)
		testenv.WaitFor(t, 30*time.Second, "macdv of 1m and 5m and 3 more 1m bars of "+switchUser, func() bool {
			return points(t, contract.TF1m, "macdv_12_26_9") > 0 && points(t, contract.TF5m, "macdv_12_26_9") > 0 && s.lastCandle(t, bars).Start >= last.Start+3*60
		})
		for _, tf := range []contract.Timeframe{contract.TF1m, contract.TF5m} {
			ps := s.indicator(t, a.series(switchUser, "BTC-USD", tf), "macdv_12_26_9")
			if f := ps[len(ps)-1].Fields; len(f) != 3 {
				t.Errorf("macdv %s fields %v, want macd, signal, hist", tf, f)
			}
		}
		books, seen := messages.after(contract.ResultSubject(switchUser, res.ID), bookPrefix)
		if !seen {
			t.Fatalf("the result of switch-mode %s was not seen on its subject", res.ID)
		}
		if len(books) != 0 {
			t.Errorf("%d book snapshots of %s after switching to scalper-macdv (first %s)", len(books), switchUser, books[0].Data)
		}
	})

	t.Run("same mode", func(t *testing.T) {
		rev, _ := s.stateEntry(t, switchUser)
		res := s.run(t, switchUser, contract.CmdSwitchMode, `{"mode":"scalper-macdv"}`)
		r := resultAs[contract.SwitchModeResult](t, res)
		if r.Switched || r.Status != contract.ResultAlreadyInMode || len(res.Steps) != 0 {
			t.Errorf("switch to the current mode: %s, want already_in_mode without steps", resultString(res))
		}
		if rev2, _ := s.stateEntry(t, switchUser); rev2 != rev {
			t.Errorf("switch to the current mode wrote the desired state (KV revision %d → %d)", rev, rev2)
		}
	})
}

// testClearCache: each scope deletes exactly its keys of the user's
// account, with other users', other exchanges' and unrelated keys present;
// glob-like symbols are rejected and delete nothing.
func testClearCache(t *testing.T, s *cmdStack, kraken int64) {
	a := s.account(t, cacheUser)
	u, ex := itoa(a.UserID), itoa(a.ExchangeID)
	testenv.WaitFor(t, 60*time.Second, "candle and indicator keys of both symbols of "+cacheUser, func() bool {
		return len(s.keys(t, "candles:"+u+":"+ex+":*")) == 12 &&
			len(s.keys(t, "indicator:"+u+":"+ex+":BTC-USD:1h:*")) > 0 && len(s.keys(t, "indicator:"+u+":"+ex+":ETH-USD:1h:*")) > 0
	})
	// Paused, nothing of the user's is written, so the keys stay as they are.
	s.run(t, cacheUser, contract.CmdPause, "{}")

	kr := itoa(kraken)
	planted := []string{
		// the user's other exchange account
		"candles:" + u + ":" + kr + ":BTC-USD:1m", "candles:" + u + ":" + kr + ":BTC-USD:1h", "indicator:" + u + ":" + kr + ":BTC-USD:1h:ema_20",
		// another symbol of the account
		"candles:" + u + ":" + ex + ":BTC-USDT:1h", "indicator:" + u + ":" + ex + ":BTC-USDT:1h:ema_20",
		// another user and another exchange whose ids start with the user's and the account's
		"candles:" + u + "00000:" + ex + ":BTC-USD:1h", "indicator:" + u + "00000:" + ex + ":BTC-USD:1h:ema_20",
		"candles:" + u + ":" + ex + "00000:BTC-USD:1h",
		// unrelated keys
		"xcandles:" + u + ":" + ex + ":BTC-USD:1h", "archive:candles:" + u + ":" + ex + ":BTC-USD:1h", "session:" + u, "unrelated",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, k := range planted {
		if err := s.rdb.ZAdd(ctx, k, redisZ(k)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	otherUser := s.account(t, bystander)
	otherKeys := s.keys(t, "candles:"+itoa(otherUser.UserID)+":*")
	if len(otherKeys) == 0 {
		t.Fatalf("%s has no candle keys", bystander)
	}
	universe := func(t *testing.T) map[string]string { return s.snapshot(t, userKeys(a), planted...) }
	// inScope is the model of a selector: well-formed keys of the user's
	// exchange account within scope.
	inScope := func(key string, exchange int64, scope, symbol, tf string) bool {
		p := strings.Split(key, ":")
		if !(len(p) == 5 && p[0] == "candles" || len(p) == 6 && p[0] == "indicator") || p[1] != u || p[2] != itoa(exchange) {
			return false
		}
		switch scope {
		case "symbol":
			return p[3] == symbol
		case "timeframe":
			return p[3] == symbol && p[4] == tf
		}
		return scope == "all"
	}

	t.Run("rejected", func(t *testing.T) {
		before := universe(t)
		invalid, forbidden := contract.CodeInvalidPayload, contract.CodeForbidden
		for _, tc := range []struct {
			payload, field string
			code           contract.ErrorCode
		}{
			{`{"scope":"symbol","symbol":"*"}`, "symbol", invalid},
			{`{"scope":"symbol","symbol":"BTC-*"}`, "symbol", invalid},
			{`{"scope":"symbol","symbol":"[A-Z]*"}`, "symbol", invalid},
			{`{"scope":"symbol","symbol":"BTC-USD:*"}`, "symbol", invalid},
			{`{"scope":"timeframe","symbol":"BTC-*","timeframe":"1h"}`, "symbol", invalid},
			{`{"scope":"timeframe","symbol":"BTC-USD:*","timeframe":"1h"}`, "symbol", invalid},
			{`{"scope":"timeframe","symbol":"BTC-USD","timeframe":"*"}`, "timeframe", invalid},
			{`{"scope":"*"}`, "scope", invalid},
			// Another user's exchange account is forbidden, not malformed.
			{fmt.Sprintf(`{"scope":"all","exchange":%d}`, otherUser.ExchangeID), "exchange", forbidden},
		} {
			ack := s.send(t, cacheUser, contract.CmdClearCache, tc.payload, "")
			if ack.Accepted || ack.Error == nil || ack.Error.Code != tc.code || !hasField(ack.Error, tc.field) {
				t.Errorf("clear-cache %s: ACK %s, want rejected %s naming %s", tc.payload, ackString(ack), tc.code, tc.field)
			}
		}
		if d := diffSnapshots(before, universe(t)); d != "" {
			t.Errorf("rejected clear-caches changed keys: %s", d)
		}
		for _, r := range s.commandRows(t, cacheUser) {
			if r.Command == string(contract.CmdClearCache) {
				t.Errorf("rejected clear-cache recorded in command_log: %+v", r)
			}
		}
	})

	for _, tc := range []struct {
		name, payload        string
		exchange             int64
		scope, symbol, frame string
	}{
		{"timeframe", `{"scope":"timeframe","symbol":"BTC-USD","timeframe":"1h"}`, a.ExchangeID, "timeframe", "BTC-USD", "1h"},
		{"symbol", `{"scope":"symbol","symbol":"ETH-USD"}`, a.ExchangeID, "symbol", "ETH-USD", ""},
		{"all of the other account", fmt.Sprintf(`{"scope":"all","exchange":%d}`, kraken), kraken, "all", "", ""},
		{"all", `{"scope":"all"}`, a.ExchangeID, "all", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := universe(t)
			var want []string
			for k := range before {
				if inScope(k, tc.exchange, tc.scope, tc.symbol, tc.frame) {
					want = append(want, k)
				}
			}
			if len(want) == 0 {
				t.Fatalf("no key of scope %s to delete", tc.payload)
			}
			res := s.run(t, cacheUser, contract.CmdClearCache, tc.payload)
			r := resultAs[contract.ClearCacheResult](t, res)
			if !r.Cleared || string(r.Scope) != tc.scope || r.Exchange != tc.exchange || r.DeletedCount != len(want) {
				t.Errorf("clear-cache %s: result %s, want cleared %s of exchange %d with deletedCount %d", tc.payload, res.Result, tc.scope, tc.exchange, len(want))
			}
			checkSteps(t, res, 1, "vigil-indicators forget")
			after := universe(t)
			for k, v := range before {
				w, kept := after[k]
				switch {
				case slices.Contains(want, k) && kept:
					t.Errorf("%s: %s was not deleted", tc.payload, k)
				case !slices.Contains(want, k) && (!kept || v != w):
					t.Errorf("%s: %s was deleted or changed", tc.payload, k)
				}
			}
			for k := range after {
				if _, ok := before[k]; !ok {
					t.Errorf("%s: %s was created", tc.payload, k)
				}
			}
		})
	}
	if n, err := s.rdb.Exists(ctx, otherKeys...).Result(); err != nil || n != int64(len(otherKeys)) {
		t.Errorf("%d of %d candle keys of %s left (%v)", n, len(otherKeys), bystander, err)
	}
}

// hasField reports whether e names field.
func hasField(e *contract.Error, field string) bool {
	for _, f := range e.Fields {
		if f.Field == field {
			return true
		}
	}
	return false
}

// testDuplicateIDs: the same id, as Nats-Msg-Id or payload id, sent again
// or at the same time, gets the first ACK and runs once. The command is a
// clear-cache of a key the test plants: an execution deletes it, so a key
// planted again after the first run must survive the duplicates.
func testDuplicateIDs(t *testing.T, s *cmdStack) {
	a := s.account(t, dupUser)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	key := "candles:" + itoa(a.UserID) + ":" + itoa(a.ExchangeID) + ":DUP-USD:1m"
	plant := func(t *testing.T) {
		t.Helper()
		if err := s.rdb.ZAdd(ctx, key, redisZ(key)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	const clear = `{"scope":"symbol","symbol":"DUP-USD"}`
	// fence runs one more clear-cache of another symbol: the user's
	// commands of one priority run in order, so any duplicate execution
	// queued before it has run when its result arrives.
	fence := func(t *testing.T) {
		t.Helper()
		s.run(t, dupUser, contract.CmdClearCache, `{"scope":"symbol","symbol":"FENCE-USD"}`)
		if n, err := s.rdb.Exists(ctx, key).Result(); err != nil || n != 1 {
			t.Errorf("the key planted after the first run was deleted: a duplicate ran again (%v)", err)
		}
	}
	// sendAll sends n copies at once and checks that every ACK is the first.
	sendAll := func(t *testing.T, n int, payload, msgID string, first contract.Ack) {
		t.Helper()
		acks := make([]contract.Ack, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { acks[i], errs[i] = s.trySend(dupUser, contract.CmdClearCache, payload, msgID) })
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			if ackString(acks[i]) != ackString(first) {
				t.Errorf("duplicate ACK %s, want the first %s", ackString(acks[i]), ackString(first))
			}
		}
	}
	check := func(t *testing.T, id string) {
		t.Helper()
		res := s.waitResult(t, dupUser, id, 30*time.Second)
		if r := resultAs[contract.ClearCacheResult](t, res); res.Status != contract.StatusSucceeded || r.DeletedCount != 1 {
			t.Errorf("result of %s: %s, want succeeded deleting the planted key", id, resultString(res))
		}
	}

	t.Run("Nats-Msg-Id", func(t *testing.T) {
		plant(t)
		first := s.send(t, dupUser, contract.CmdClearCache, clear, "dup-header")
		if !first.Accepted || first.ID != "dup-header" {
			t.Fatalf("ACK %s, want accepted with id dup-header", ackString(first))
		}
		sendAll(t, 4, clear, "dup-header", first)
		check(t, "dup-header")
		plant(t)
		sendAll(t, 3, clear, "dup-header", first)
		fence(t)
	})
	t.Run("payload id", func(t *testing.T) {
		plant(t)
		payload := `{"id":"dup-payload","scope":"symbol","symbol":"DUP-USD"}`
		first := s.send(t, dupUser, contract.CmdClearCache, payload, "")
		if !first.Accepted || first.ID != "dup-payload" {
			t.Fatalf("ACK %s, want accepted with id dup-payload", ackString(first))
		}
		sendAll(t, 4, payload, "", first)
		sendAll(t, 1, payload, "dup-payload", first) // the same id in both places is the same id
		check(t, "dup-payload")
		plant(t)
		sendAll(t, 2, payload, "", first)
		fence(t)
	})
	t.Run("one result and one row each", func(t *testing.T) {
		for _, id := range []string{"dup-header", "dup-payload"} {
			if n := s.count(t, contract.StreamResults, contract.ResultSubject(dupUser, id), 0); n != 1 {
				t.Errorf("%d results of %s, want 1", n, id)
			}
		}
		var ids []string
		for _, r := range s.finalRows(t, dupUser, "dup-header", "dup-payload") {
			ids = append(ids, r.ID)
			if r.ID != "dup-header" && r.ID != "dup-payload" {
				continue
			}
			if r.Attempts != 1 || r.Status != string(contract.StatusSucceeded) {
				t.Errorf("command_log row %+v, want succeeded after 1 attempt", r)
			}
		}
		if ids = slices.DeleteFunc(ids, func(id string) bool { return id != "dup-header" && id != "dup-payload" }); !slices.Equal(ids, []string{"dup-header", "dup-payload"}) {
			t.Errorf("command_log rows %q, want one of dup-header and one of dup-payload", ids)
		}
	})
	t.Run("different ids", func(t *testing.T) {
		ack := s.send(t, dupUser, contract.CmdClearCache, `{"id":"dup-a","scope":"symbol","symbol":"DUP-USD"}`, "dup-b")
		if ack.Accepted || ack.Error == nil || ack.Error.Code != contract.CodeInvalidPayload {
			t.Errorf("payload id dup-a with Nats-Msg-Id dup-b: ACK %s, want rejected invalid_payload", ackString(ack))
		}
	})
}

// testPriority: a pause queued behind clear-caches runs before them. The
// first clear-cache has 100000 keys to delete; while it runs, four more
// and then a pause are queued.
func testPriority(t *testing.T, s *cmdStack) {
	a := s.account(t, priorityUser)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const filler = 100_000
	for i := 0; i < filler; i += 10_000 {
		pipe := s.rdb.Pipeline()
		for j := i; j < i+10_000; j++ {
			pipe.Set(ctx, fmt.Sprintf("candles:%d:%d:FILL-%d:1m", a.UserID, a.ExchangeID, j), "x", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	clears := []contract.Ack{s.accept(t, priorityUser, contract.CmdClearCache, `{"scope":"all"}`)}
	testenv.WaitFor(t, 30*time.Second, "the first clear-cache to run", func() bool {
		return commandRowOf(t, s, priorityUser, clears[0].ID).Status == "running"
	})
	for range 4 {
		clears = append(clears, s.accept(t, priorityUser, contract.CmdClearCache, `{"scope":"all"}`))
	}
	pause := s.accept(t, priorityUser, contract.CmdPause, "{}")
	// The queue as the pause found it: clear-caches still queued (nothing
	// leaves the queue but by being claimed, and a claim after the pause
	// was queued takes the pause), and one clear-cache running unless it
	// has finished since and handed over to the pause.
	var running string
	var queued []string
	states := s.queueStates(t, priorityUser)
	for _, ack := range clears {
		switch states[ack.ID] {
		case "running":
			running = ack.ID
		case "accepted":
			queued = append(queued, ack.ID)
		}
	}
	if len(queued) == 0 {
		t.Fatalf("no clear-cache was queued when the pause was accepted; the scenario needs more filler keys")
	}
	if running != "" && pause.Position != 1 {
		t.Errorf("pause ACK position %d, want 1 (only the running clear-cache %s ahead)", pause.Position, running)
	}
	results := map[string]contract.Result{}
	for _, ack := range append(slices.Clone(clears), pause) {
		results[ack.ID] = s.waitResult(t, priorityUser, ack.ID, 60*time.Second)
		if results[ack.ID].Status != contract.StatusSucceeded {
			t.Errorf("%s %s: %s", ack.Command, ack.ID, resultString(results[ack.ID]))
		}
	}
	rows := map[string]commandRow{}
	var all []string
	for _, ack := range append(slices.Clone(clears), pause) {
		all = append(all, ack.ID)
	}
	for _, r := range s.finalRows(t, priorityUser, all...) {
		rows[r.ID] = r
	}
	p := rows[pause.ID]
	if p.Started == nil {
		t.Fatalf("the pause's command_log row has no start: %+v", p)
	}
	for _, ack := range clears {
		if q := rows[ack.ID]; q.Started != nil && q.Started.Before(*p.Started) && (q.Finished == nil || q.Finished.After(*p.Started)) {
			t.Errorf("the pause started at %v while clear-cache %s ran (%v to %v)", p.Started.Format(time.RFC3339Nano), q.ID, q.Started.Format(time.RFC3339Nano), q.Finished)
		}
	}
	for _, id := range queued {
		q := rows[id]
		if q.Started == nil || !p.Started.Before(*q.Started) {
			t.Errorf("clear-cache %s, queued when the pause came, started at %v; the pause at %v", q.ID, q.Started, p.Started.Format(time.RFC3339Nano))
		}
		if !results[pause.ID].FinishedAt.Before(results[id].FinishedAt) {
			t.Errorf("clear-cache %s, queued when the pause came, finished first (%v vs %v)", id, results[id].FinishedAt, results[pause.ID].FinishedAt)
		}
	}
	t.Logf("the pause ran %v after it was accepted, before the %d queued clear-caches", p.Started.Sub(p.Accepted), len(queued))
}
