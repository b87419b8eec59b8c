package figures

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"vigil.dev/bench/internal/report"
	"vigil.dev/bench/internal/stack"
	"vigil.dev/bench/internal/stats"
	"vigil.dev/pkg/contract"
)

// coinbasePublicRPS is Coinbase's public REST limit (requests per second
// per IP, /work/shared/COINBASE.md), which the proxy enforces.
const coinbasePublicRPS = 10

// limitedExchange is a reverse proxy in front of the fake exchange's REST
// API that behaves like Coinbase's rate limit: a request that would be
// the (limit+1)-th within one second is answered 429 and not forwarded.
// It records every request.
type limitedExchange struct {
	limit  int
	proxy  *httputil.ReverseProxy
	server *http.Server
	url    string

	mu       sync.Mutex
	requests []restRequest
}

// restRequest is one request the proxy saw.
type restRequest struct {
	at     time.Time
	status int
	query  string
}

func startLimitedExchange(target string, limit int) (*limitedExchange, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	x := &limitedExchange{limit: limit, proxy: httputil.NewSingleHostReverseProxy(u), url: "http://" + ln.Addr().String()}
	x.server = &http.Server{Handler: x, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = x.server.Serve(ln) }()
	return x, nil
}

// ServeHTTP implements http.Handler.
func (x *limitedExchange) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	x.mu.Lock()
	inWindow := 0
	for i := len(x.requests) - 1; i >= 0 && now.Sub(x.requests[i].at) < time.Second; i-- {
		if x.requests[i].status != http.StatusTooManyRequests {
			inWindow++
		}
	}
	status := http.StatusOK
	if inWindow >= x.limit {
		status = http.StatusTooManyRequests
	}
	x.requests = append(x.requests, restRequest{at: now, status: status, query: r.URL.RawQuery})
	x.mu.Unlock()
	if status == http.StatusTooManyRequests {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"error":"RESOURCE_EXHAUSTED","message":"Too many requests"}`))
		return
	}
	x.proxy.ServeHTTP(w, r)
}

// seen returns the requests so far.
func (x *limitedExchange) seen() []restRequest {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([]restRequest(nil), x.requests...)
}

func (x *limitedExchange) close() { _ = x.server.Close() }

// Backfill measures figure 6: a force-backfill of BackfillPages pages of
// 1m candles through vigil-control and vigil-feed (VIGIL_FEED_SOURCE=
// coinbase) against the fake exchange behind a proxy that enforces
// Coinbase's public limit of 10 requests per second: the request rate the
// feed used against the allowed one, and the 429s it got.
func Backfill(ctx context.Context, env *Env, out *Output) error {
	env.Log.Info("backfill: starting the stack (fake exchange, feed on coinbase, indicators, control)")
	s, err := env.newStack(ctx, "backfill")
	if err != nil {
		return err
	}
	defer s.Close()
	pages := env.Opts.BackfillPages
	fake, err := stack.StartFakeExchange(ctx, env.Bins, s.servers.Dir, "-products", "BTC-USD",
		"-minutes", fmt.Sprint(pages*300+600), "-bars", "400")
	if err != nil {
		return err
	}
	defer fake.Stop()
	x, err := startLimitedExchange(fake.RESTURL, coinbasePublicRPS)
	if err != nil {
		return err
	}
	defer x.close()
	const user = "backfill-0"
	if _, err := s.seed(ctx, []string{user}, commandUserSettings); err != nil {
		return err
	}
	feedEnv := []string{"VIGIL_FEED_SOURCE=coinbase", "VIGIL_COINBASE_WS_URL=" + fake.WebSocketURL,
		"VIGIL_COINBASE_REST_URL=" + x.url, fmt.Sprintf("VIGIL_COINBASE_PUBLIC_RPS=%d", coinbasePublicRPS)}
	if _, err := s.start(ctx, []string{stack.Feed}, 1, 1, feedEnv...); err != nil {
		return err
	}
	if _, err := s.start(ctx, []string{stack.Indicators, stack.Control}, 1, 1); err != nil {
		return err
	}
	if err := s.waitStates(ctx, []string{user}); err != nil {
		return err
	}
	// The feed fills the user's gaps from REST when it attaches them; wait
	// until that is over (no request for two seconds).
	if err := poll(ctx, 2*time.Minute, "the feed's start-up gap fill", func() (bool, error) {
		r := x.seen()
		return len(r) > 0 && time.Since(r[len(r)-1].at) > 2*time.Second, nil
	}); err != nil {
		return err
	}
	cmd, err := newCommander(s.nc)
	if err != nil {
		return err
	}
	defer cmd.close()
	before := len(x.seen())
	to := time.Now().UTC().Truncate(time.Minute)
	from := to.Add(-time.Duration(pages*300) * time.Minute)
	env.Log.Info("backfill: force-backfill", "pages", pages, "from", from, "to", to)
	res, elapsed, err := cmd.run(ctx, user, contract.CmdForceBackfill, contract.ForceBackfillPayload{
		Symbol: "BTC-USD", Timeframes: []contract.Timeframe{contract.TF1m},
		From: from.Format(time.RFC3339), To: to.Format(time.RFC3339)}, 10*time.Minute)
	if err != nil {
		return err
	}
	if res.Status != contract.StatusSucceeded {
		return fmt.Errorf("%w: force-backfill: %s", ErrFigure, errText(res.Error))
	}
	all := x.seen()
	during := all[before:]
	if len(during) < 2 {
		return fmt.Errorf("%w: force-backfill made %d REST requests", ErrFigure, len(during))
	}
	var rates, intervals []float64
	throttled := 0
	for i, r := range during {
		if r.status == http.StatusTooManyRequests {
			throttled++
		}
		if i > 0 {
			gap := r.at.Sub(during[i-1].at).Seconds()
			rates, intervals = append(rates, 1/gap), append(intervals, gap*1000)
		}
	}
	span := during[len(during)-1].at.Sub(during[0].at)
	used := float64(len(during)-1) / span.Seconds()
	throttledTotal := 0
	for _, r := range all {
		if r.status == http.StatusTooManyRequests {
			throttledTotal++
		}
	}
	rate := report.Row{Number: 6, Figure: "backfill", Name: "force-backfill REST request rate", Unit: "req/s",
		Value: report.Rates(stats.Summarize(rates)), Target: "≥ 0.9×, zero 429",
		Note: fmt.Sprintf("overall %.2f req/s = %.3f× over %d requests in %.2fs; most in any 1s: %d", used, used/coinbasePublicRPS,
			len(during), span.Seconds(), mostInWindow(during, time.Second))}
	rate.Compare("allowed (Coinbase public limit)", report.Single(coinbasePublicRPS), false)
	rate.SetMet(used/coinbasePublicRPS >= 0.9 && throttled == 0)
	tooMany := report.Row{Number: 6, Figure: "backfill", Name: "force-backfill 429 answers", Unit: "count",
		Value: report.Single(float64(throttled)), Target: "0", Note: fmt.Sprintf("%d in the whole run, start-up gap fill included", throttledTotal)}
	tooMany.SetMet(throttled == 0)
	out.add("backfill", map[string]any{"pages": pages, "requests": len(during), "span_s": span.Seconds(), "used_rps": used,
		"allowed_rps": coinbasePublicRPS, "rate_samples": stats.Summarize(rates), "intervals_ms": intervals, "throttled": throttled,
		"throttled_total": throttledTotal, "requests_total": len(all), "command_s": elapsed.Seconds(), "result": string(res.Result)},
		rate, tooMany)
	return nil
}

// mostInWindow is the largest number of requests within any window.
func mostInWindow(rs []restRequest, window time.Duration) int {
	most, lo := 0, 0
	for hi := range rs {
		for rs[hi].at.Sub(rs[lo].at) >= window {
			lo++
		}
		most = max(most, hi-lo+1)
	}
	return most
}
