package daemon_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/testenv"
	"vigil.dev/services/feed/internal/sim"
)

// placement maps each active user to the instances where it runs.
func placement(v map[string]statusView) map[string][]string {
	out := map[string][]string{}
	for id, st := range v {
		for user, u := range st.Users {
			if u.Active {
				out[user] = append(out[user], id)
			}
		}
	}
	return out
}

// eachOnce reports whether every user in users runs on exactly one instance
// and no other user runs anywhere.
func eachOnce(p map[string][]string, users []string) bool {
	if len(p) != len(users) {
		return false
	}
	for _, u := range users {
		if len(p[u]) != 1 {
			return false
		}
	}
	return true
}

func TestVerbsOnTwoInstancesAndFailover(t *testing.T) {
	s := newStack(t, 0)
	anchor := time.Now().UTC().Truncate(time.Hour)
	env := simEnv(anchor)
	env["VIGIL_FEED_GAP_FILL_BARS"] = "30"
	first := startFeed(t, s, env)
	startFeed(t, s, env)
	ref, err := sim.New(sim.Config{Seed: 7, Speed: 600, Anchor: anchor}, nil)
	if err != nil {
		t.Fatal(err)
	}

	states := map[string]contract.DesiredState{}
	var users []string
	for i := range 6 {
		st := contract.DesiredState{User: fmt.Sprintf("u%d", i), UserID: int64(i + 1), ExchangeID: 1, Mode: contract.ModePositionMonitor, Revision: 1, Symbols: []string{"BTC-USD"}}
		if i%2 == 0 {
			st.Symbols = append(st.Symbols, "ETH-USD")
		}
		states[st.User] = st
		users = append(users, st.User)
		s.putState(t, st)
	}
	testenv.WaitFor(t, 20*time.Second, "every user running on exactly one of two instances", func() bool {
		v, err := s.tryStatuses(2, time.Second)
		if err != nil {
			return false
		}
		for _, st := range v {
			if len(st.Members) != 2 {
				return false
			}
		}
		return eachOnce(placement(v), users)
	})
	for id, st := range s.statuses(t, 2) {
		// One subscriber per user and product, however the users are split.
		want := map[string]int{}
		for user, u := range st.Users {
			if u.Active {
				for _, sym := range states[user].Symbols {
					want[sym]++
				}
			}
		}
		for sym, n := range want {
			if got := st.Products[sym].Subscribers; got != n {
				t.Errorf("instance %s: %s has %d subscribers, want %d", id, sym, got, n)
			}
		}
	}

	verb := func(v contract.Verb, st contract.DesiredState, args any) map[string]json.RawMessage {
		t.Helper()
		req := contract.SvcRequest{CommandID: "cmd-" + string(v) + "-" + st.User, User: st.User, State: &st}
		if args != nil {
			req.Args, _ = json.Marshal(args)
		}
		_, result := ownerReply(t, s.call(t, v, req, 2, 60*time.Second))
		return result
	}

	t.Run("pause", func(t *testing.T) {
		st := states["u0"]
		st.Paused, st.Revision = true, 2
		s.putState(t, st)
		res := verb(contract.VerbPause, st, nil)
		if string(res["paused"]) != "true" {
			t.Errorf("pause result %v", res)
		}
		p := placement(s.statuses(t, 2))
		if len(p["u0"]) != 0 {
			t.Errorf("u0 still runs on %v after pause", p["u0"])
		}
		states["u0"] = st
	})

	t.Run("resume fills the gap", func(t *testing.T) {
		id := contract.SeriesID{User: "u0", UserID: 1, ExchangeID: 1, Symbol: "BTC-USD", Timeframe: contract.TF1m}
		// The gap resume fills: from the last bar stored before the pause,
		// at most VIGIL_FEED_GAP_FILL_BARS (30) bars back from the attach, which
		// is before the reply (at 600× a loaded machine can take longer
		// than 30 sim minutes between pause and resume).
		var mark int64
		if before := s.series(t, id); len(before) > 0 {
			mark = before[len(before)-1].Start
		}
		paused := ref.Now()
		testenv.WaitFor(t, 10*time.Second, "five sim minutes", func() bool { return ref.Now().Sub(paused) >= 5*time.Minute })
		st := states["u0"]
		st.Paused, st.Revision = false, 3
		s.putState(t, st)
		res := verb(contract.VerbResume, st, nil)
		var symbols []string
		var filled map[string]map[contract.Timeframe]int
		if err := json.Unmarshal(res["symbols"], &symbols); err != nil || !slices.Equal(symbols, st.Symbols) {
			t.Errorf("resume symbols %s, want %v", res["symbols"], st.Symbols)
		}
		if err := json.Unmarshal(res["gap_filled"], &filled); err != nil {
			t.Fatalf("gap_filled %s: %v", res["gap_filled"], err)
		}
		if filled["BTC-USD"][contract.TF1m] < 4 || filled["ETH-USD"][contract.TF1m] < 4 {
			t.Errorf("gap_filled %v, want at least 4 1m bars per symbol after 5 sim minutes", filled)
		}
		mark = max(mark, contract.TF1m.BarStart(ref.Now().Add(-29*time.Minute)).Unix())
		after := s.series(t, id)
		i := slices.IndexFunc(after, func(c contract.Candle) bool { return c.Start >= mark })
		if i < 0 {
			t.Fatalf("no 1m bar from %d on after resume", mark)
		}
		if gap := contiguous(after[i:]); gap != 0 {
			t.Errorf("1m bar %d missing after resume (checked from %d)", gap, mark)
		}
		states["u0"] = st
	})

	t.Run("apply switches symbols and the book", func(t *testing.T) {
		st := states["u1"]
		st.Symbols, st.Mode, st.Revision = []string{"ETH-USD", "SOL-USD"}, contract.ModeScalperOrderbook, 2
		book := make(chan *nats.Msg, 16)
		sub, err := s.nc.ChanSubscribe(contract.BookSubject("u1", 1, "SOL-USD"), book)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		s.putState(t, st)
		res := verb(contract.VerbApply, st, nil)
		var added, removed []string
		_ = json.Unmarshal(res["added"], &added)
		_ = json.Unmarshal(res["removed"], &removed)
		if !slices.Equal(added, []string{"ETH-USD", "SOL-USD"}) || !slices.Equal(removed, []string{"BTC-USD"}) || string(res["book"]) != "true" {
			t.Errorf("apply result %v, want added ETH-USD SOL-USD, removed BTC-USD, book on", res)
		}
		select {
		case <-book:
		case <-time.After(5 * time.Second):
			t.Error("no SOL-USD book for u1 after switching to scalper-orderbook")
		}
		for _, v := range s.statuses(t, 2) {
			if u, ok := v.Users["u1"]; ok && u.Active && (!slices.Equal(u.Subscribed, st.Symbols) || !u.Book) {
				t.Errorf("u1 after apply: %+v", u)
			}
		}
		states["u1"] = st
	})

	t.Run("backfill reports pages and candles", func(t *testing.T) {
		st := states["u2"]
		progress := make(chan *nats.Msg, 16)
		sub, err := s.nc.ChanSubscribe(contract.ProgressSubject("u2", "bf"), progress)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		// Wall-clock times, as control sends them: the sim reads them
		// shifted to its own clock.
		to := time.Now()
		res := verb(contract.VerbBackfill, st, contract.BackfillArgs{UserID: 2, ExchangeID: 1, Symbol: "BTC-USD",
			Timeframes: []contract.Timeframe{contract.TF1h}, From: to.Add(-400 * time.Hour), To: to, ProgressSubject: contract.ProgressSubject("u2", "bf")})
		var candles map[contract.Timeframe]int
		if err := json.Unmarshal(res["candles"], &candles); err != nil || candles[contract.TF1h] < 400 || candles[contract.TF1h] > 401 {
			t.Errorf("backfill result %v, want the 400 or 401 1h bars of 400 hours", res)
		}
		for i := 1; i <= 2; i++ {
			select {
			case m := <-progress:
				var p contract.Progress
				if err := json.Unmarshal(m.Data, &p); err != nil || p.Done != i || p.Total != 2 {
					t.Errorf("progress %d: %s", i, m.Data)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("progress event %d missing", i)
			}
		}
		got := s.series(t, contract.SeriesID{User: "u2", UserID: 2, ExchangeID: 1, Symbol: "BTC-USD", Timeframe: contract.TF1h})
		if len(got) < 400 {
			t.Errorf("%d 1h bars stored after a 400-bar backfill", len(got))
		}
		if newest := got[len(got)-1].StartTime(); ref.Now().Sub(newest) > 2*time.Hour {
			t.Errorf("the newest 1h bar starts at %v, long before the sim clock %v: the range was not read on the sim's clock", newest, ref.Now())
		}
		if gap := contiguous(got); gap != 0 {
			t.Errorf("1h bar %d missing after the backfill", gap)
		}
	})

	t.Run("backfill rejects a bad range", func(t *testing.T) {
		st := states["u2"]
		args, _ := json.Marshal(contract.BackfillArgs{UserID: 2, ExchangeID: 1, Symbol: "BTC-USD", Timeframes: []contract.Timeframe{contract.TF1m},
			From: time.Now().Add(-200_000 * time.Minute), To: time.Now(), ProgressSubject: "vigil.progress.u9.x"})
		replies := s.call(t, contract.VerbBackfill, contract.SvcRequest{User: "u2", State: &st, Args: args}, 2, 10*time.Second)
		failed := 0
		for _, r := range replies {
			if !r.OK {
				failed++
				if r.Error.Code != contract.CodeInvalidPayload {
					t.Errorf("error %+v, want invalid_payload", r.Error)
				}
			}
		}
		if failed != 1 {
			t.Errorf("%d instances refused the bad backfill, want the owner alone: %+v", failed, replies)
		}
	})

	t.Run("pause cancels a running backfill", func(t *testing.T) {
		st := states["u3"]
		progress := make(chan *nats.Msg, 1024)
		sub, err := s.nc.ChanSubscribe(contract.ProgressSubject("u3", "long"), progress)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		args, _ := json.Marshal(contract.BackfillArgs{UserID: 4, ExchangeID: 1, Symbol: "BTC-USD", Timeframes: []contract.Timeframe{contract.TF1m},
			From: time.Now().Add(-99_000 * time.Minute), To: time.Now(), ProgressSubject: contract.ProgressSubject("u3", "long")})
		type outcome struct {
			replies []contract.SvcReply
			err     error
		}
		done := make(chan outcome, 1)
		go func() {
			r, err := s.tryCall(contract.VerbBackfill, contract.SvcRequest{CommandID: "long", User: "u3", State: &st, Args: args}, 2, 60*time.Second)
			done <- outcome{r, err}
		}()
		select {
		case <-progress:
		case <-time.After(10 * time.Second):
			t.Fatal("the long backfill reported no progress")
		}
		paused := st
		paused.Paused, paused.Revision = true, 2
		s.putState(t, paused)
		verb(contract.VerbPause, paused, nil)
		var o outcome
		select {
		case o = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the backfill did not end after pause")
		}
		if o.err != nil {
			t.Fatal(o.err)
		}
		cancelled := 0
		for _, r := range o.replies {
			if !r.OK && r.Error.Code == contract.CodeTimeout {
				cancelled++
			}
		}
		if cancelled != 1 {
			t.Errorf("backfill replies %+v, want the owner's cancelled", o.replies)
		}
		// Control sends the command's feed.cancel beside the pause, which
		// may arrive first: the cancel still tells how far the job got.
		cancelArgs, _ := json.Marshal(contract.CancelArgs{CommandID: "long"})
		_, res := ownerReply(t, s.call(t, contract.VerbCancel, contract.SvcRequest{User: "u3", Args: cancelArgs}, 2, 10*time.Second))
		var stopped []contract.JobProgress
		if err := json.Unmarshal(res["stopped"], &stopped); err != nil || len(stopped) != 1 || stopped[0].Pages < 1 {
			t.Errorf("cancel after the pause answered %s, want the job the pause stopped, with its pages", res["stopped"])
		}
		st.Revision = 3
		s.putState(t, st)
		verb(contract.VerbResume, st, nil)
	})

	t.Run("cancel stops a running backfill between pages", func(t *testing.T) {
		progress := make(chan *nats.Msg, 1024)
		sub, err := s.nc.ChanSubscribe(contract.ProgressSubject("u4", "long4"), progress)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		// SOL-USD is not among u4's symbols: only the backfill writes it.
		args, _ := json.Marshal(contract.BackfillArgs{UserID: 5, ExchangeID: 1, Symbol: "SOL-USD", Timeframes: []contract.Timeframe{contract.TF1m},
			From: time.Now().Add(-99_000 * time.Minute), To: time.Now(), ProgressSubject: contract.ProgressSubject("u4", "long4")})
		done := make(chan []contract.SvcReply, 1)
		go func() {
			r, _ := s.tryCall(contract.VerbBackfill, contract.SvcRequest{CommandID: "long4", User: "u4", Args: args}, 2, 60*time.Second)
			done <- r
		}()
		select {
		case <-progress:
		case <-time.After(10 * time.Second):
			t.Fatal("the long backfill reported no progress")
		}
		other, _ := json.Marshal(contract.CancelArgs{CommandID: "another"})
		for _, r := range s.call(t, contract.VerbCancel, contract.SvcRequest{User: "u4", Args: other}, 2, 10*time.Second) {
			if !r.OK || !strings.Contains(string(r.Result), `"stopped":[]`) {
				t.Errorf("cancel of a command without a job: %+v", r)
			}
		}
		cancelArgs, _ := json.Marshal(contract.CancelArgs{CommandID: "long4"})
		_, res := ownerReply(t, s.call(t, contract.VerbCancel, contract.SvcRequest{User: "u4", Args: cancelArgs}, 2, 10*time.Second))
		var stopped []contract.JobProgress
		if err := json.Unmarshal(res["stopped"], &stopped); err != nil || len(stopped) != 1 {
			t.Fatalf("cancel answered %v, want one stopped job", res)
		}
		got := stopped[0]
		if got.Pages < 1 || got.Pages >= got.Total || got.Candles[contract.TF1m] != got.Pages*300 {
			t.Errorf("stopped after %d of %d pages with %d candles: want whole 300-bar pages, fewer than all", got.Pages, got.Total, got.Candles[contract.TF1m])
		}
		select {
		case r := <-done:
			if _, failed := ownerOrFailed(r); failed == nil || failed.Code != contract.CodeTimeout {
				t.Errorf("the cancelled backfill answered %+v", r)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the backfill did not answer after its cancel")
		}
		stored := s.series(t, contract.SeriesID{User: "u4", UserID: 5, ExchangeID: 1, Symbol: "SOL-USD", Timeframe: contract.TF1m})
		if want := min(got.Candles[contract.TF1m], redisstore.DefaultRetention); len(stored) != want {
			t.Errorf("%d SOL-USD bars stored, want the %d written before the cancel (retention %d)", len(stored), want, redisstore.DefaultRetention)
		}
		if gap := contiguous(stored); gap != 0 {
			t.Errorf("1m bar %d missing in what the cancelled backfill kept", gap)
		}
	})

	first.stop(t)
	testenv.WaitFor(t, 15*time.Second, "every user on the surviving instance", func() bool {
		v, err := s.tryStatuses(1, time.Second)
		return err == nil && eachOnce(placement(v), users)
	})
	for _, v := range s.statuses(t, 1) {
		if len(v.Members) != 1 {
			t.Errorf("members after the kill: %v", v.Members)
		}
		if u := v.Users["u1"]; !u.Book || !slices.Equal(u.Subscribed, []string{"ETH-USD", "SOL-USD"}) {
			t.Errorf("u1 after failover: %+v", u)
		}
	}
}

// ownerOrFailed returns the replies' one error, if any.
func ownerOrFailed(replies []contract.SvcReply) (ok int, failed *contract.Error) {
	for _, r := range replies {
		if r.OK {
			ok++
		} else {
			failed = r.Error
		}
	}
	return ok, failed
}
