package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/testenv"
)

// fakeExchange is the feed's fake Coinbase (services/feed/cmd/fakecoinbase)
// running as a process.
type fakeExchange struct {
	REST, WS, Admin string
}

// fakeRequest is one REST request the fake received.
type fakeRequest struct {
	At     time.Time
	Path   string
	Query  url.Values
	Status int
}

// startFakeExchange builds and runs the fake with args and waits for the
// URLs it prints.
func startFakeExchange(t *testing.T, args ...string) fakeExchange {
	t.Helper()
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "fakecoinbase")
	build := exec.Command("go", "build", "-o", bin, "./services/feed/cmd/fakecoinbase")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build fakecoinbase: %v\n%s", err, out)
	}
	logFile, err := os.Create(filepath.Join(dir, "fakecoinbase.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logFile.Close() })
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
	}()
	var urls struct{ REST, WS, Admin string }
	select {
	case l := <-line:
		if err := json.Unmarshal([]byte(l), &urls); err != nil || urls.REST == "" || urls.Admin == "" {
			t.Fatalf("fakecoinbase printed %q (%v)", l, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("fakecoinbase printed no URLs within 30s")
	}
	return fakeExchange{REST: urls.REST, WS: urls.WS, Admin: urls.Admin}
}

// requests are the REST requests the fake received, in arrival order.
func (f fakeExchange) requests(t *testing.T) []fakeRequest {
	t.Helper()
	var out []fakeRequest
	f.get(t, f.Admin+"/requests", &out)
	return out
}

func (f fakeExchange) get(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", u, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
}

// maxPerWindow is the largest number of requests within any window
// [t, t+window).
func maxPerWindow(reqs []fakeRequest, window time.Duration) int {
	best, lo := 0, 0
	for hi := range reqs {
		for reqs[hi].At.Sub(reqs[lo].At) >= window {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

// candleRequests are the fake's requests for product's candles at
// granularity whose start lies in [from, to).
func candleRequests(reqs []fakeRequest, product, granularity string, from, to time.Time) []fakeRequest {
	var out []fakeRequest
	for _, r := range reqs {
		start, err := strconv.ParseInt(r.Query.Get("start"), 10, 64)
		if err == nil && strings.Contains(r.Path, "/products/"+product+"/candles") && r.Query.Get("granularity") == granularity &&
			start >= from.Unix() && start < to.Unix() {
			out = append(out, r)
		}
	}
	return out
}

// Users of TestCommandsCoinbase.
const (
	backfillUser     = "backfill"
	longBackfillUser = "backfill-long"
)

// TestCommandsCoinbase runs force-backfill end to end with the feed on
// the fake Coinbase: progress, counts, the REST rate limit, indicators
// recomputed, and a pause that cancels a long backfill without waiting
// for it.
func TestCommandsCoinbase(t *testing.T) {
	fake := startFakeExchange(t, "-products", "BTC-USD,ETH-USD", "-history", "168h", "-heartbeat", "250ms")
	const rps = 8
	s := newCmdStack(t, "VIGIL_FEED_SOURCE=coinbase", "VIGIL_COINBASE_WS_URL="+fake.WS, "VIGIL_COINBASE_REST_URL="+fake.REST,
		"VIGIL_COINBASE_PUBLIC_RPS="+strconv.Itoa(rps), "VIGIL_FEED_GAP_FILL_BARS=5", "VIGIL_FEED_CANDLE_RETENTION=20000")
	s.seed(t, backfillUser, `{"mode":"position-monitor","symbols":["BTC-USD"]}`)
	s.seed(t, longBackfillUser, `{"mode":"position-monitor","symbols":["ETH-USD"]}`)
	began := time.Now()
	s.startAll(t, 1, backfillUser, longBackfillUser)
	t.Logf("services up and desired states written in %v", time.Since(began).Round(time.Millisecond))

	// The backfilled range: the two days before yesterday (UTC), whole bars
	// of every timeframe, so that nothing but the backfill reads it at any
	// time of day. The feed seeds today's buckets when it subscribes a
	// product, and the user's start-up gap fill reads VIGIL_FEED_GAP_FILL_BARS-1
	// bars before the attach: for 4h that reaches back 16-20 hours, into
	// yesterday whenever the test starts before 16:00 UTC (it did end at
	// today's midnight, and the gap fill's 4h request counted as a page).
	to := time.Now().UTC().Truncate(24 * time.Hour).Add(-24 * time.Hour)
	from := to.Add(-48 * time.Hour)
	t.Run("jobs", func(t *testing.T) {
		t.Run("force-backfill", func(t *testing.T) { t.Parallel(); testForceBackfill(t, s, fake, from, to) })
		t.Run("pause cancels a long backfill", func(t *testing.T) { t.Parallel(); testPauseDuringBackfill(t, s, fake) })
	})

	reqs := fake.requests(t)
	if most := maxPerWindow(reqs, time.Second); most > rps {
		t.Errorf("the fake got %d REST requests within one second, the feed's limit is %d", most, rps)
	}
	t.Logf("%d REST requests, at most %d in any second (limit %d)", len(reqs), maxPerWindow(reqs, time.Second), rps)

	// Asked after the rate check, so that the test's own request does not count.
	t.Run("backfilled values are the exchange's", func(t *testing.T) {
		var body struct {
			Candles []struct{ Start, Open, High, Low, Close, Volume string } `json:"candles"`
		}
		fake.get(t, fmt.Sprintf("%s/api/v3/brokerage/market/products/BTC-USD/candles?granularity=ONE_HOUR&start=%d&end=%d",
			fake.REST, from.Unix(), to.Add(-time.Hour).Unix()), &body)
		stored := map[int64]contract.Candle{}
		for _, c := range s.candles(t, s.account(t, backfillUser).series(backfillUser, "BTC-USD", contract.TF1h)) {
			stored[c.Start] = c
		}
		if len(body.Candles) != 48 {
			t.Fatalf("the fake has %d 1h candles in the range, want 48", len(body.Candles))
		}
		for _, want := range body.Candles {
			start, _ := strconv.ParseInt(want.Start, 10, 64)
			got := stored[start]
			f := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
			if f(got.Open) != want.Open || f(got.High) != want.High || f(got.Low) != want.Low || f(got.Close) != want.Close || f(got.Volume) != want.Volume {
				t.Errorf("1h bar %s: stored %+v, the exchange has %+v", time.Unix(start, 0).UTC().Format(time.RFC3339), got, want)
			}
		}
	})
}

// testForceBackfill backfills four timeframes of [from, to) and checks the
// result's counts, the stored bars, the progress events, one REST request
// per page, and that the 1h indicators were recomputed over the range.
func testForceBackfill(t *testing.T, s *cmdStack, fake fakeExchange, from, to time.Time) {
	a := s.account(t, backfillUser)
	tfs := []contract.Timeframe{contract.TF1m, contract.TF5m, contract.TF1h, contract.TF4h}
	want := map[contract.Timeframe]int{contract.TF1m: 2880, contract.TF5m: 576, contract.TF1h: 48, contract.TF4h: 12}
	granularity := map[contract.Timeframe]string{contract.TF1m: "ONE_MINUTE", contract.TF5m: "FIVE_MINUTE", contract.TF1h: "ONE_HOUR", contract.TF4h: "FOUR_HOUR"}
	inRange := func(cs []contract.Candle) []contract.Candle {
		return slices.DeleteFunc(cs, func(c contract.Candle) bool { return c.Start < from.Unix() || c.Start >= to.Unix() })
	}
	hourly := a.series(backfillUser, "BTC-USD", contract.TF1h)
	indicators := []string{"ema_20", "rsi_14", "macd_12_26_9", "atr_14", "bb_20_2"}
	pointsInRange := func(t *testing.T, name string) map[int64]bool {
		out := map[int64]bool{}
		for _, p := range s.indicator(t, hourly, name) {
			if p.Start >= from.Unix() && p.Start < to.Unix() {
				out[p.Start] = true
			}
		}
		return out
	}
	testenv.WaitFor(t, 30*time.Second, "the gap fill of "+backfillUser, func() bool { return s.lastCandle(t, hourly).Start > 0 })
	for _, tf := range tfs {
		if n := len(inRange(s.candles(t, a.series(backfillUser, "BTC-USD", tf)))); n != 0 {
			t.Fatalf("%d %s bars in the range before the backfill (VIGIL_FEED_GAP_FILL_BARS=5 should keep it empty)", n, tf)
		}
	}
	for _, name := range indicators {
		if n := len(pointsInRange(t, name)); n != 0 {
			t.Fatalf("%d 1h %s points in the range before the backfill", n, name)
		}
	}

	payload := fmt.Sprintf(`{"symbol":"BTC-USD","timeframes":["1m","5m","1h","4h"],"from":%q,"to":%q}`, from.Format(time.RFC3339), to.Format(time.RFC3339))
	res := s.run(t, backfillUser, contract.CmdForceBackfill, payload)
	r := resultAs[contract.ForceBackfillResult](t, res)
	if !r.Backfilled || r.Symbol != "BTC-USD" || !maps.Equal(r.Candles, want) {
		t.Errorf("force-backfill result %s, want backfilled BTC-USD with candles %v", res.Result, want)
	}
	var steps []string
	for range tfs {
		steps = append(steps, "vigil-feed backfill", "vigil-indicators recompute")
	}
	checkSteps(t, res, 1, steps...)

	t.Run("stored bars", func(t *testing.T) {
		for _, tf := range tfs {
			cs := inRange(s.candles(t, a.series(backfillUser, "BTC-USD", tf)))
			if len(cs) != want[tf] || consecutive(cs, tf) != "" || cs[0].Start != from.Unix() {
				t.Errorf("%s: %d bars stored in the range (gap %q), want %d from %s", tf, len(cs), consecutive(cs, tf), want[tf], from.Format(time.RFC3339))
				continue
			}
			for _, c := range cs {
				if !c.Closed || c.Source != "rest" {
					t.Errorf("%s bar %s: closed %v source %q, want a closed rest bar", tf, c.StartTime().Format(time.RFC3339), c.Closed, c.Source)
					break
				}
			}
		}
	})

	// Pages of at most 300 bars: control's progress per timeframe, the
	// feed's per page in between.
	pages := map[contract.Timeframe]int{}
	var wantProgress []string
	for i, tf := range tfs {
		wantProgress = append(wantProgress, fmt.Sprintf("timeframes %d/%d", i, len(tfs)))
		pages[tf] = (want[tf] + 299) / 300
		for p := 1; p <= pages[tf]; p++ {
			wantProgress = append(wantProgress, fmt.Sprintf("pages %d/%d", p, pages[tf]))
		}
	}
	wantProgress = append(wantProgress, fmt.Sprintf("timeframes %d/%d", len(tfs), len(tfs)))
	t.Run("progress", func(t *testing.T) {
		var got []string
		for _, m := range s.published(t, contract.StreamResults, contract.ProgressSubject(backfillUser, res.ID), 0) {
			var p contract.Progress
			if err := json.Unmarshal(m.Data(), &p); err != nil || p.ID != res.ID {
				t.Errorf("progress event %s (%v), want one of %s", m.Data(), err, res.ID)
			}
			got = append(got, fmt.Sprintf("%s %d/%d", p.Unit, p.Done, p.Total))
		}
		if !slices.Equal(got, wantProgress) {
			t.Errorf("progress events\n%q\nwant\n%q", got, wantProgress)
		}
	})

	t.Run("one request per page", func(t *testing.T) {
		reqs := fake.requests(t)
		for _, tf := range tfs {
			if n := len(candleRequests(reqs, "BTC-USD", granularity[tf], from, to)); n != pages[tf] {
				t.Errorf("%s: %d REST requests in the range, want %d pages", tf, n, pages[tf])
			}
		}
	})

	t.Run("indicators recomputed", func(t *testing.T) {
		// Every indicator is warm after 34 bars (MACD 26 + 9 - 1), so
		// the last 14 bars of the range all have every value.
		for _, name := range indicators {
			have := pointsInRange(t, name)
			for at := from.Add(34 * time.Hour); at.Before(to); at = at.Add(time.Hour) {
				if !have[at.Unix()] {
					t.Errorf("1h %s has no point at %s after the recompute (%d points in the range)", name, at.Format(time.RFC3339), len(have))
					break
				}
			}
		}
	})
}

// testPauseDuringBackfill starts a backfill of six days of 1m bars (29
// pages at the rate limit, several seconds) and pauses the user as soon as
// the first page is in: the pause runs at once and cancels the backfill,
// which fetches nothing more.
func testPauseDuringBackfill(t *testing.T, s *cmdStack, fake fakeExchange) {
	to := time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
	from := to.Add(-6 * 24 * time.Hour)
	const totalPages = (6*24*60 + 299) / 300
	payload := fmt.Sprintf(`{"symbol":"ETH-USD","timeframes":["1m"],"from":%q,"to":%q}`, from.Format(time.RFC3339), to.Format(time.RFC3339))
	backfill := s.accept(t, longBackfillUser, contract.CmdForceBackfill, payload)
	progress := contract.ProgressSubject(longBackfillUser, backfill.ID)
	feedPages := func(t *testing.T) []contract.Progress {
		var out []contract.Progress
		for _, m := range s.published(t, contract.StreamResults, progress, 0) {
			var p contract.Progress
			if json.Unmarshal(m.Data(), &p) == nil && p.Unit == "pages" {
				out = append(out, p)
			}
		}
		return out
	}
	testenv.WaitFor(t, 30*time.Second, "the first page of the backfill", func() bool { return len(feedPages(t)) > 0 })

	pause := s.accept(t, longBackfillUser, contract.CmdPause, "{}")
	if pause.Position != 0 {
		t.Errorf("pause ACK position %d, want 0: a running backfill is not ahead in the queue", pause.Position)
	}
	res := s.waitResult(t, longBackfillUser, pause.ID, 30*time.Second)
	if res.Status != contract.StatusSucceeded {
		t.Fatalf("pause during the backfill: %s", resultString(res))
	}
	took := res.FinishedAt.Sub(res.AcceptedAt)
	if took > 5*time.Second {
		t.Errorf("the pause took %v from ACK to result, want it not to wait for the backfill", took)
	}
	bf := s.waitResult(t, longBackfillUser, backfill.ID, 30*time.Second)
	r := resultAs[contract.ForceBackfillResult](t, bf)
	if bf.Status != contract.StatusCancelled || r.Backfilled || r.CancelledBy != pause.ID {
		t.Errorf("backfill result %s, want cancelled by %s", resultString(bf), pause.ID)
	}
	done := feedPages(t)
	if last := done[len(done)-1]; last.Total != totalPages || last.Done >= last.Total {
		t.Errorf("last page progress %d/%d, want fewer than %d pages done when the pause cancelled it", last.Done, last.Total, totalPages)
	}
	reqs := candleRequests(fake.requests(t), "ETH-USD", "ONE_MINUTE", from, to)
	if len(reqs) == 0 || len(reqs) >= totalPages {
		t.Errorf("%d REST pages of the backfill, want some but fewer than %d", len(reqs), totalPages)
	}
	for _, q := range reqs {
		if q.At.After(res.FinishedAt) {
			t.Errorf("backfill page requested at %s, after the pause's result at %s", q.At.Format(time.RFC3339Nano), res.FinishedAt.Format(time.RFC3339Nano))
		}
	}
	t.Logf("pause took %v from ACK to result; the backfill had fetched %d of %d pages", took, len(reqs), totalPages)

	resume := s.run(t, longBackfillUser, contract.CmdResume, "{}")
	if rr := resultAs[contract.ResumeResult](t, resume); rr.Status != contract.ResultResumed {
		t.Errorf("resume after the cancelled backfill: %s", resume.Result)
	}
}
