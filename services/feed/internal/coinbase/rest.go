package coinbase

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"vigil.dev/pkg/wait"
)

// DefaultRESTBaseURL is Coinbase's REST API origin.
const DefaultRESTBaseURL = "https://api.coinbase.com"

// REST defaults, used when the RESTConfig field is zero.
const (
	// DefaultPublicRequestsPerSecond is Coinbase's public limit (per IP).
	DefaultPublicRequestsPerSecond = 10
	// DefaultPrivateRequestsPerSecond is Coinbase's private limit (per key).
	DefaultPrivateRequestsPerSecond = 30
	// DefaultMaxRetries is how many times a throttled or failed request is retried.
	DefaultMaxRetries = 5
	// DefaultRetryBase is the first retry delay when no Retry-After is given.
	DefaultRetryBase = 500 * time.Millisecond
	// DefaultRetryMax caps the retry delay computed by backoff.
	DefaultRetryMax = 10 * time.Second
	// DefaultRequestTimeout bounds one HTTP request when HTTPClient is nil.
	DefaultRequestTimeout = 30 * time.Second
	// MaxBucketsPerRequest is the page size. Coinbase rejects more than 350
	// buckets per request and reports disagree on the exact cap; 300 is safe.
	MaxBucketsPerRequest = 300
)

// maxResponseBytes bounds a candles response; 300 candles are about 40 KB.
const maxResponseBytes = 4 << 20

// ErrRequestFailed means an HTTP request could not be made or its response not read.
var ErrRequestFailed = errors.New("coinbase: request failed")

// RESTConfig configures a RESTClient. Zero fields take the defaults above.
type RESTConfig struct {
	// BaseURL is the API origin; default DefaultRESTBaseURL.
	BaseURL string
	// Credentials, when set, switch to the private candles endpoint with a
	// fresh JWT per request; otherwise the public endpoint is used.
	Credentials *Credentials
	// RequestsPerSecond is the limit; default 10 public, 30 private. Requests
	// are paced evenly 5 % below it, and a sliding window of their send
	// times keeps at most that many within any 1.1 s, so no one-second
	// window at the exchange exceeds it even when sends bunch up late.
	RequestsPerSecond float64
	// Limiter, when set, is used instead of one built from RequestsPerSecond,
	// so several clients can share one budget.
	Limiter *rate.Limiter
	// HTTPClient sends the requests; default a client with DefaultRequestTimeout.
	HTTPClient *http.Client
	// MaxRetries is how many times a 429, 401, 5xx or transport failure is retried.
	MaxRetries int
	// RetryBase is the first backoff delay; each retry doubles it.
	RetryBase time.Duration
	// RetryMax caps the backoff delay (a Retry-After header is obeyed as sent).
	RetryMax time.Duration
	// Logger receives retry reports; default slog.Default().
	Logger *slog.Logger
}

// RESTStats counts a RESTClient's requests. Counters only grow.
type RESTStats struct {
	// Requests counts HTTP requests sent, retries included.
	Requests uint64
	// Throttled counts 429 answers.
	Throttled uint64
	// Unauthorized counts 401 answers.
	Unauthorized uint64
	// Retries counts requests repeated after a retryable failure.
	Retries uint64
}

// PageProgress reports one finished page of a Candles call.
type PageProgress struct {
	// Page is the number of pages done (1-based), Pages the total.
	Page, Pages int
	// From and To are the page's bucket range [From, To).
	From, To time.Time
	// Candles is how many candles the page returned inside its range.
	Candles int
}

// CandlesOption adjusts one Candles call.
type CandlesOption func(*candlesOptions)

type candlesOptions struct {
	progress func(PageProgress)
}

// WithPageProgress calls fn after every page, from the calling goroutine.
func WithPageProgress(fn func(PageProgress)) CandlesOption {
	return func(o *candlesOptions) { o.progress = fn }
}

// RESTClient fetches historical candles. It is safe for concurrent use; all
// calls share its rate limiter, so use one client per credential (Coinbase
// counts public requests per IP and private ones per key).
type RESTClient struct {
	cfg     RESTConfig
	base    *url.URL
	limiter *rate.Limiter
	window  *sendWindow
	log     *slog.Logger

	requests, throttled, unauthorized, retries atomic.Uint64
}

// NewRESTClient checks cfg and fills in defaults. Errors wrap ErrInvalidConfig.
func NewRESTClient(cfg RESTConfig) (*RESTClient, error) {
	if cfg.BaseURL == "" {
		cfg.BaseURL = DefaultRESTBaseURL
	}
	base, err := url.Parse(cfg.BaseURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" || base.RawQuery != "" {
		return nil, fmt.Errorf("%w: BaseURL %q is not an http(s) origin", ErrInvalidConfig, cfg.BaseURL)
	}
	switch {
	case cfg.RequestsPerSecond < 0:
		return nil, fmt.Errorf("%w: RequestsPerSecond is negative (%v)", ErrInvalidConfig, cfg.RequestsPerSecond)
	case cfg.RequestsPerSecond == 0 && cfg.Credentials != nil:
		cfg.RequestsPerSecond = DefaultPrivateRequestsPerSecond
	case cfg.RequestsPerSecond == 0:
		cfg.RequestsPerSecond = DefaultPublicRequestsPerSecond
	}
	switch {
	case cfg.MaxRetries < 0:
		return nil, fmt.Errorf("%w: MaxRetries is negative (%d)", ErrInvalidConfig, cfg.MaxRetries)
	case cfg.MaxRetries == 0:
		cfg.MaxRetries = DefaultMaxRetries
	}
	if cfg.RetryBase < 0 || cfg.RetryMax < 0 {
		return nil, fmt.Errorf("%w: RetryBase %v or RetryMax %v is negative", ErrInvalidConfig, cfg.RetryBase, cfg.RetryMax)
	}
	if cfg.RetryBase == 0 {
		cfg.RetryBase = DefaultRetryBase
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = max(DefaultRetryMax, cfg.RetryBase)
	}
	if cfg.RetryMax < cfg.RetryBase {
		return nil, fmt.Errorf("%w: RetryMax %v is below RetryBase %v", ErrInvalidConfig, cfg.RetryMax, cfg.RetryBase)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: DefaultRequestTimeout}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	limiter := cfg.Limiter
	if limiter == nil {
		limiter = newPacedLimiter(cfg.RequestsPerSecond)
	}
	return &RESTClient{
		cfg:     cfg,
		base:    base,
		limiter: limiter,
		window:  newSendWindow(cfg.RequestsPerSecond),
		log:     cfg.Logger.With("component", "coinbase-rest", "private", cfg.Credentials != nil),
	}, nil
}

// RequestsPerSecond is the rate requests are paced at (the configured
// limit less the pacing headroom, or the shared limiter's).
func (c *RESTClient) RequestsPerSecond() float64 {
	return float64(c.limiter.Limit())
}

// Stats returns the request counters.
func (c *RESTClient) Stats() RESTStats {
	return RESTStats{
		Requests:     c.requests.Load(),
		Throttled:    c.throttled.Load(),
		Unauthorized: c.unauthorized.Load(),
		Retries:      c.retries.Load(),
	}
}

// Candles returns the candles of product whose buckets overlap [from, to),
// oldest first, one per bucket start. Buckets with no trades are absent (the
// exchange sends none). The range is fetched in pages of at most
// MaxBucketsPerRequest buckets, one request at a time through the shared
// limiter. Errors wrap ErrInvalidProduct, ErrInvalidGranularity,
// ErrInvalidRange, ErrUnknownProduct, ErrBadRequest, ErrRateLimited,
// ErrUnauthorized, ErrUnexpectedStatus, ErrMalformedResponse or
// ErrRequestFailed, or are ctx's error.
func (c *RESTClient) Candles(ctx context.Context, product string, granularity Granularity, from, to time.Time, opts ...CandlesOption) ([]Candle, error) {
	var o candlesOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := ValidateProduct(product); err != nil {
		return nil, err
	}
	step := granularity.Duration()
	if step == 0 {
		return nil, fmt.Errorf("%w: %q", ErrInvalidGranularity, granularity)
	}
	if !to.After(from) {
		return nil, fmt.Errorf("%w: to %v is not after from %v", ErrInvalidRange, to, from)
	}
	stepSec := int64(step / time.Second)
	first := floorDiv(from.Unix(), stepSec) * stepSec
	last := floorDiv(to.Add(-time.Nanosecond).Unix(), stepSec) * stepSec
	buckets := (last-first)/stepSec + 1
	pages := int((buckets + MaxBucketsPerRequest - 1) / MaxBucketsPerRequest)

	byStart := make(map[int64]Candle, buckets)
	for page := range pages {
		pageFrom := first + int64(page)*MaxBucketsPerRequest*stepSec
		pageTo := min(pageFrom+MaxBucketsPerRequest*stepSec, last+stepSec)
		got, err := c.fetchPage(ctx, product, granularity, pageFrom, pageTo)
		if err != nil {
			return nil, fmt.Errorf("candles %s %s page %d/%d: %w", product, granularity.Timeframe(), page+1, pages, err)
		}
		inRange := 0
		for _, candle := range got {
			if start := candle.Start.Unix(); start >= pageFrom && start < pageTo {
				byStart[start] = candle
				inRange++
			}
		}
		if o.progress != nil {
			o.progress(PageProgress{
				Page: page + 1, Pages: pages,
				From: time.Unix(pageFrom, 0).UTC(), To: time.Unix(pageTo, 0).UTC(),
				Candles: inRange,
			})
		}
	}
	out := slices.Collect(maps.Values(byStart))
	slices.SortFunc(out, func(a, b Candle) int { return a.Start.Compare(b.Start) })
	return out, nil
}

// floorDiv divides rounding towards minus infinity.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// fetchPage performs one page request, retrying throttling and transient failures.
func (c *RESTClient) fetchPage(ctx context.Context, product string, granularity Granularity, start, end int64) ([]Candle, error) {
	path := "/api/v3/brokerage/market/products/" + product + "/candles"
	if c.cfg.Credentials != nil {
		path = "/api/v3/brokerage/products/" + product + "/candles"
	}
	u := *c.base // JoinPath would drop the leading slash of an empty base path, and the JWT uri needs it
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawQuery = url.Values{
		"start":       {strconv.FormatInt(start, 10)},
		"end":         {strconv.FormatInt(end, 10)},
		"granularity": {string(granularity)},
	}.Encode()

	for attempt := 1; ; attempt++ {
		if err := c.limiter.Wait(ctx); err != nil {
			return nil, err
		}
		if err := c.window.wait(ctx); err != nil {
			return nil, err
		}
		status, header, body, err := c.get(ctx, &u)
		if err == nil && status == http.StatusOK {
			return decodeCandlesResponse(product, body)
		}
		retryable := err != nil || status == http.StatusTooManyRequests || status == http.StatusUnauthorized || status >= 500
		if err == nil {
			switch status {
			case http.StatusTooManyRequests:
				c.throttled.Add(1)
			case http.StatusUnauthorized:
				c.unauthorized.Add(1)
			}
			err = apiError(status, body, attempt)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !retryable || attempt > c.cfg.MaxRetries {
			return nil, err
		}
		pause, fromHeader := retryAfter(header)
		if !fromHeader {
			pause = jitteredBackoff(attempt, c.cfg.RetryBase, c.cfg.RetryMax)
		}
		c.retries.Add(1)
		c.log.Warn("coinbase REST request retried", "product", product, "granularity", granularity, "attempt", attempt, "wait", pause, "error", err)
		if !wait.Sleep(ctx, pause) {
			return nil, ctx.Err()
		}
	}
}

// get sends one GET and reads the body.
func (c *RESTClient) get(ctx context.Context, u *url.URL) (status int, header http.Header, body []byte, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("%w: %w", ErrRequestFailed, err)
	}
	req.Header.Set("Accept", "application/json")
	if c.cfg.Credentials != nil {
		token, err := c.cfg.Credentials.RESTToken(http.MethodGet, u.Host, u.Path)
		if err != nil {
			return 0, nil, nil, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c.requests.Add(1)
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("%w: %w", ErrRequestFailed, err)
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("%w: reading body: %w", ErrRequestFailed, err)
	}
	return resp.StatusCode, resp.Header, body, nil
}

// apiError builds an *APIError from a non-2xx answer; a body that is not the
// usual JSON leaves Code and Message empty.
func apiError(status int, body []byte, attempts int) error {
	var payload struct {
		Error        string `json:"error"`
		Message      string `json:"message"`
		ErrorDetails string `json:"error_details"`
	}
	_ = json.Unmarshal(body, &payload) // best effort: the status alone is enough
	return &APIError{StatusCode: status, Code: payload.Error, Message: payload.Message, Details: payload.ErrorDetails, Attempts: attempts}
}

// retryAfter reads a Retry-After header in seconds or as an HTTP date.
func retryAfter(header http.Header) (time.Duration, bool) {
	value := header.Get("Retry-After")
	if value == "" {
		return 0, false
	}
	if seconds, err := strconv.Atoi(value); err == nil && seconds >= 0 {
		return time.Duration(seconds) * time.Second, true
	}
	if at, err := http.ParseTime(value); err == nil {
		return max(time.Until(at), 0), true
	}
	return 0, false
}

// decodeCandlesResponse parses a 200 body.
func decodeCandlesResponse(product string, body []byte) ([]Candle, error) {
	var payload struct {
		Candles []rawCandle `json:"candles"`
	}
	if err := json.Unmarshal(body, &payload); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedResponse, err)
	}
	out := make([]Candle, 0, len(payload.Candles))
	for i, rc := range payload.Candles {
		candle, err := rc.parse(product)
		if err != nil {
			return nil, fmt.Errorf("%w: candle %d: %v", ErrMalformedResponse, i, err)
		}
		out = append(out, candle)
	}
	return out, nil
}
