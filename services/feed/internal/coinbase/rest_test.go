package coinbase_test

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"vigil.dev/services/feed/internal/coinbase"
	"vigil.dev/services/feed/internal/fakecoinbase"
)

// newRESTClient returns a client for fake with fast retries; adjust may change the config.
func newRESTClient(t *testing.T, fake *fakecoinbase.Server, adjust func(*coinbase.RESTConfig)) *coinbase.RESTClient {
	t.Helper()
	cfg := coinbase.RESTConfig{
		BaseURL:           fake.URL,
		RequestsPerSecond: 1000,
		RetryBase:         10 * time.Millisecond,
		RetryMax:          50 * time.Millisecond,
		Logger:            quietLogger,
	}
	if adjust != nil {
		adjust(&cfg)
	}
	client, err := coinbase.NewRESTClient(cfg)
	if err != nil {
		t.Fatalf("NewRESTClient: %v", err)
	}
	return client
}

// queryInt reads an integer query parameter of a recorded request.
func queryInt(t *testing.T, r fakecoinbase.Request, name string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(r.Query.Get(name), 10, 64)
	if err != nil {
		t.Fatalf("request %s: query %s: %v", r.Path, name, err)
	}
	return v
}

func TestCandlesPagesRangesOldestFirst(t *testing.T) {
	base := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name        string
		granularity coinbase.Granularity
		stored      int // candles generated from base
		from, to    time.Time
		wantCandles int
		wantPages   int
	}{
		{"1000 one-minute candles", coinbase.OneMinute, 1000, base, base.Add(1000 * time.Minute), 1000, 4},
		{"exactly one page", coinbase.FiveMinute, 300, base, base.Add(300 * 5 * time.Minute), 300, 1},
		{"one bucket past a page", coinbase.FiveMinute, 301, base, base.Add(301 * 5 * time.Minute), 301, 2},
		{"unaligned bounds cover partly touched buckets", coinbase.OneHour, 10, base.Add(90 * time.Minute), base.Add(150 * time.Minute), 2, 1},
		{"subrange of a longer series", coinbase.FifteenMinute, 500, base.Add(100 * 15 * time.Minute), base.Add(450 * 15 * time.Minute), 350, 2},
		{"days", coinbase.OneDay, 30, base, base.Add(30 * 24 * time.Hour), 30, 1},
		{"four hours past the stored end", coinbase.FourHour, 6, base, base.Add(10 * 4 * time.Hour), 6, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := fakecoinbase.NewServer()
			t.Cleanup(fake.Close)
			stored, err := fake.GenerateCandles("BTC-USD", string(tt.granularity), base, tt.stored)
			if err != nil {
				t.Fatal(err)
			}
			client := newRESTClient(t, fake, nil)
			var progress []coinbase.PageProgress
			got, err := client.Candles(context.Background(), "BTC-USD", tt.granularity, tt.from, tt.to,
				coinbase.WithPageProgress(func(p coinbase.PageProgress) { progress = append(progress, p) }))
			if err != nil {
				t.Fatalf("Candles: %v", err)
			}
			if len(got) != tt.wantCandles {
				t.Fatalf("got %d candles, want %d", len(got), tt.wantCandles)
			}
			step := tt.granularity.Duration()
			firstStart := tt.from.Truncate(step)
			byStart := make(map[int64]fakecoinbase.Candle, len(stored))
			for _, c := range stored {
				byStart[c.Start.Unix()] = c
			}
			for i, c := range got {
				if want := firstStart.Add(time.Duration(i) * step); !c.Start.Equal(want) {
					t.Fatalf("candle %d starts %v, want %v (oldest first, no duplicates, no holes)", i, c.Start, want)
				}
				s := byStart[c.Start.Unix()]
				if c.Product != "BTC-USD" || c.Open != s.Open || c.High != s.High || c.Low != s.Low || c.Close != s.Close || c.Volume != s.Volume {
					t.Fatalf("candle %d = %+v, want the stored %+v", i, c, s)
				}
			}

			requests := fake.Requests()
			if len(requests) != tt.wantPages || len(progress) != tt.wantPages {
				t.Fatalf("%d requests and %d progress reports, want %d each", len(requests), len(progress), tt.wantPages)
			}
			for i, r := range requests {
				start, end := queryInt(t, r, "start"), queryInt(t, r, "end")
				if buckets := (end - start) / int64(step/time.Second); buckets > coinbase.MaxBucketsPerRequest || buckets < 1 {
					t.Errorf("request %d spans %d buckets, want 1..%d", i, buckets, coinbase.MaxBucketsPerRequest)
				}
				if r.Path != "/api/v3/brokerage/market/products/BTC-USD/candles" || r.Query.Get("granularity") != string(tt.granularity) {
					t.Errorf("request %d = %s?%s, want the public candles path with granularity %s", i, r.Path, r.Query.Encode(), tt.granularity)
				}
			}
			for i, p := range progress {
				if p.Page != i+1 || p.Pages != tt.wantPages {
					t.Errorf("progress %d = %+v, want page %d of %d", i, p, i+1, tt.wantPages)
				}
			}
		})
	}
}

func TestCandlesErrors(t *testing.T) {
	from := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	to := from.Add(time.Hour)
	tests := []struct {
		name         string
		setup        func(*fakecoinbase.Server)
		product      string
		granularity  coinbase.Granularity
		from, to     time.Time
		want         error
		wantRequests int
		wantInError  string
	}{
		{"unknown product is 404", nil, "NOPE-USD", coinbase.OneMinute, from, to, coinbase.ErrUnknownProduct, 1, "Product NOPE-USD not supported"},
		{"400 is not retried", func(f *fakecoinbase.Server) {
			f.AnswerError(1, http.StatusBadRequest, "INVALID_ARGUMENT", "number of candles requested should be less than 350")
		}, "BTC-USD", coinbase.OneMinute, from, to, coinbase.ErrBadRequest, 1, "should be less than 350"},
		{"persistent 429 gives up", func(f *fakecoinbase.Server) { f.Answer429(10) }, "BTC-USD", coinbase.OneMinute, from, to, coinbase.ErrRateLimited, 3, "RATE_LIMIT_EXCEEDED"},
		{"persistent 500 gives up", func(f *fakecoinbase.Server) {
			f.AnswerError(10, http.StatusInternalServerError, "INTERNAL", "boom")
		}, "BTC-USD", coinbase.OneMinute, from, to, coinbase.ErrUnexpectedStatus, 3, "boom"},
		{"invalid product is refused locally", nil, "btc-usd", coinbase.OneMinute, from, to, coinbase.ErrInvalidProduct, 0, ""},
		{"unsupported granularity", nil, "BTC-USD", "TWO_HOUR", from, to, coinbase.ErrInvalidGranularity, 0, ""},
		{"empty range", nil, "BTC-USD", coinbase.OneMinute, from, from, coinbase.ErrInvalidRange, 0, ""},
		{"reversed range", nil, "BTC-USD", coinbase.OneMinute, to, from, coinbase.ErrInvalidRange, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := fakecoinbase.NewServer()
			t.Cleanup(fake.Close)
			if _, err := fake.GenerateCandles("BTC-USD", "ONE_MINUTE", from, 60); err != nil {
				t.Fatal(err)
			}
			if tt.setup != nil {
				tt.setup(fake)
			}
			client := newRESTClient(t, fake, func(c *coinbase.RESTConfig) { c.MaxRetries = 2 })
			_, err := client.Candles(context.Background(), tt.product, tt.granularity, tt.from, tt.to)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Candles error = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.wantInError) {
				t.Errorf("error %q does not mention %q", err, tt.wantInError)
			}
			if n := len(fake.Requests()); n != tt.wantRequests {
				t.Errorf("%d requests, want %d", n, tt.wantRequests)
			}
			var apiErr *coinbase.APIError
			if tt.wantRequests > 0 && (!errors.As(err, &apiErr) || apiErr.Attempts != tt.wantRequests) {
				t.Errorf("error %v: want an *APIError with Attempts=%d", err, tt.wantRequests)
			}
		})
	}
}

func TestCandlesRetriesThrottling(t *testing.T) {
	from := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name             string
		setup            func(*fakecoinbase.Server)
		wantThrottled    uint64
		wantUnauthorized uint64
		minElapsed       time.Duration
	}{
		{"429 twice then success", func(f *fakecoinbase.Server) { f.Answer429(2) }, 2, 0, 0},
		{"Retry-After is obeyed", func(f *fakecoinbase.Server) { f.Answer429WithRetryAfter(1, time.Second) }, 1, 0, time.Second},
		{"401 throttling then success", func(f *fakecoinbase.Server) {
			f.AnswerError(2, http.StatusUnauthorized, "UNAUTHENTICATED", "too many requests")
		}, 0, 2, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := fakecoinbase.NewServer()
			t.Cleanup(fake.Close)
			stored, err := fake.GenerateCandles("BTC-USD", "ONE_MINUTE", from, 10)
			if err != nil {
				t.Fatal(err)
			}
			tt.setup(fake)
			client := newRESTClient(t, fake, nil)
			started := time.Now()
			got, err := client.Candles(context.Background(), "BTC-USD", coinbase.OneMinute, from, from.Add(10*time.Minute))
			elapsed := time.Since(started)
			if err != nil {
				t.Fatalf("Candles: %v", err)
			}
			if len(got) != len(stored) {
				t.Fatalf("got %d candles, want %d", len(got), len(stored))
			}
			retries := tt.wantThrottled + tt.wantUnauthorized
			want := coinbase.RESTStats{Requests: retries + 1, Throttled: tt.wantThrottled, Unauthorized: tt.wantUnauthorized, Retries: retries}
			if s := client.Stats(); s != want {
				t.Fatalf("Stats() = %+v, want %+v", s, want)
			}
			if elapsed < tt.minElapsed {
				t.Fatalf("took %v, want at least %v", elapsed, tt.minElapsed)
			}
			requests := fake.Requests()
			for i := 1; i < len(requests); i++ {
				if gap := requests[i].At.Sub(requests[i-1].At); gap < 5*time.Millisecond {
					t.Errorf("retry %d came %v after the previous request, want a backoff of at least 5ms", i, gap)
				}
			}
		})
	}
}

func TestCandlesRateLimiterIsNeverExceeded(t *testing.T) {
	const (
		limit    = 10
		requests = 25
	)
	from := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	fake := fakecoinbase.NewServer()
	t.Cleanup(fake.Close)
	if _, err := fake.GenerateCandles("BTC-USD", "ONE_MINUTE", from, requests); err != nil {
		t.Fatal(err)
	}
	client := newRESTClient(t, fake, func(c *coinbase.RESTConfig) { c.RequestsPerSecond = limit })

	started := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, requests)
	for i := range requests {
		wg.Go(func() {
			start := from.Add(time.Duration(i) * time.Minute)
			_, err := client.Candles(context.Background(), "BTC-USD", coinbase.OneMinute, start, start.Add(time.Minute))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Candles: %v", err)
		}
	}
	elapsed := time.Since(started)

	if n := len(fake.Requests()); n != requests {
		t.Fatalf("fake saw %d requests, want %d", n, requests)
	}
	if most := fake.MaxRequestsPerWindow(time.Second); most > limit {
		t.Fatalf("fake saw %d requests within one second, limit is %d", most, limit)
	}
	// Pacing, not a burst: 25 requests at 10/s need about 2.4 s.
	if minimum := time.Duration(requests-1) * time.Second / limit; elapsed < minimum {
		t.Fatalf("%d requests took %v, faster than the limit allows (%v)", requests, elapsed, minimum)
	}
	t.Logf("%d requests in %v, at most %d in any second", requests, elapsed, fake.MaxRequestsPerWindow(time.Second))
}

func TestCandlesPrivateEndpointWithJWT(t *testing.T) {
	const keyName = "organizations/org-1/apiKeys/key-1"
	from := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	creds, key := newCredentials(t, keyName)
	wrongKey, _ := newCredentials(t, keyName)
	wrongName, _ := newCredentials(t, "organizations/org-1/apiKeys/other")

	tests := []struct {
		name        string
		creds       *coinbase.Credentials
		wantErr     error
		wantFailure string
	}{
		{"valid key", creds, nil, ""},
		{"wrong private key", wrongKey, coinbase.ErrUnauthorized, "signature is invalid"},
		{"wrong key name", wrongName, coinbase.ErrUnauthorized, "kid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := fakecoinbase.NewServer(fakecoinbase.WithAuth(keyName, &key.PublicKey))
			t.Cleanup(fake.Close)
			if _, err := fake.GenerateCandles("BTC-USD", "ONE_HOUR", from, 5); err != nil {
				t.Fatal(err)
			}
			client := newRESTClient(t, fake, func(c *coinbase.RESTConfig) { c.Credentials = tt.creds; c.MaxRetries = 1 })
			got, err := client.Candles(context.Background(), "BTC-USD", coinbase.OneHour, from, from.Add(5*time.Hour))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Candles error = %v, want %v", err, tt.wantErr)
			}
			requests := fake.Requests()
			for _, r := range requests {
				if r.Path != "/api/v3/brokerage/products/BTC-USD/candles" {
					t.Fatalf("request path %s, want the private candles path", r.Path)
				}
			}
			failures := fake.AuthFailures()
			if tt.wantErr == nil {
				if len(got) != 5 || len(failures) != 0 {
					t.Fatalf("got %d candles and auth failures %v, want 5 and none", len(got), failures)
				}
				return
			}
			if len(failures) != len(requests) || !strings.Contains(failures[0], tt.wantFailure) {
				t.Fatalf("auth failures %v for %d requests, want each to mention %q", failures, len(requests), tt.wantFailure)
			}
		})
	}
}

func TestNewRESTClientValidatesConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  coinbase.RESTConfig
	}{
		{"ws URL", coinbase.RESTConfig{BaseURL: "ws://example.com"}},
		{"URL with query", coinbase.RESTConfig{BaseURL: "https://example.com?x=1"}},
		{"negative rate", coinbase.RESTConfig{RequestsPerSecond: -1}},
		{"negative retries", coinbase.RESTConfig{MaxRetries: -1}},
		{"retry max below base", coinbase.RESTConfig{RetryBase: time.Minute, RetryMax: time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := coinbase.NewRESTClient(tt.cfg); !errors.Is(err, coinbase.ErrInvalidConfig) {
				t.Fatalf("NewRESTClient error = %v, want ErrInvalidConfig", err)
			}
		})
	}
}
