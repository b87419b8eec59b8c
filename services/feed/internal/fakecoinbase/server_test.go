package fakecoinbase_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"vigil.dev/services/feed/internal/fakecoinbase"
)

// frame is the envelope of a server frame; SequenceNum is nil on error frames.
type frame struct {
	Type        string          `json:"type"`
	Message     string          `json:"message"`
	Channel     string          `json:"channel"`
	SequenceNum *int64          `json:"sequence_num"`
	Events      json.RawMessage `json:"events"`
}

// wsClient is a bare WebSocket client for poking at the fake.
type wsClient struct {
	t    *testing.T
	conn *websocket.Conn
}

func dial(t *testing.T, s *fakecoinbase.Server) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, s.WebSocketURL, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	return &wsClient{t: t, conn: conn}
}

func (c *wsClient) send(msg string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next reads frames until one satisfies match, failing after 5 s.
func (c *wsClient) next(what string, match func(frame) bool) frame {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		_, data, err := c.conn.Read(ctx)
		if err != nil {
			c.t.Fatalf("waiting for %s: %v", what, err)
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			c.t.Fatalf("frame %s is not JSON: %v", data, err)
		}
		if match(f) {
			return f
		}
	}
}

func onChannel(channel string) func(frame) bool {
	return func(f frame) bool { return f.Channel == channel }
}

func TestWebSocketProtocol(t *testing.T) {
	s := fakecoinbase.NewServer(fakecoinbase.WithHeartbeatInterval(20 * time.Millisecond))
	t.Cleanup(s.Close)
	c := dial(t, s)

	c.send(`{"type":"subscribe","channel":"heartbeats"}`)
	first := c.next("the first ack", onChannel("subscriptions"))
	if first.SequenceNum == nil || *first.SequenceNum != 0 {
		t.Fatalf("first frame sequence_num = %v, want 0", first.SequenceNum)
	}
	c.send(`{"type":"subscribe","channel":"candles","product_ids":["BTC-USD"]}`)
	ack := c.next("the cumulative ack", onChannel("subscriptions"))
	if !strings.Contains(string(ack.Events), `{"candles":["BTC-USD"],"heartbeats":["heartbeats"]}`) {
		t.Fatalf("ack events = %s, want heartbeats and candles", ack.Events)
	}

	t.Run("sequence numbers run across channels", func(t *testing.T) {
		last := *ack.SequenceNum
		for range 5 {
			f := c.next("any frame", func(frame) bool { return true })
			if f.SequenceNum == nil || *f.SequenceNum != last+1 {
				t.Fatalf("%s frame sequence_num = %v, want %d", f.Channel, f.SequenceNum, last+1)
			}
			last = *f.SequenceNum
		}
	})

	t.Run("SkipSequence jumps the next frame", func(t *testing.T) {
		prev := c.next("a frame", func(frame) bool { return true })
		s.SkipSequence(3)
		// Frames already queued before SkipSequence may still come in order;
		// the first jump must be by exactly 3.
		for {
			f := c.next("a frame", func(frame) bool { return true })
			if d := *f.SequenceNum - *prev.SequenceNum; d != 1 {
				if d != 4 {
					t.Fatalf("sequence jumped by %d, want 4 (3 skipped)", d)
				}
				break
			}
			prev = f
		}
	})

	t.Run("PushCandle reaches the subscriber", func(t *testing.T) {
		start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
		if n := s.PushCandle("BTC-USD", fakecoinbase.Candle{Start: start, Open: 1.5, High: 2, Low: 1, Close: 1.75, Volume: 10}); n != 1 {
			t.Fatalf("PushCandle reached %d connections, want 1", n)
		}
		f := c.next("the candle", onChannel("candles"))
		for _, part := range []string{`"type":"update"`, `"start":"1772366400"`, `"open":"1.5"`, `"close":"1.75"`, `"product_id":"BTC-USD"`} {
			if !strings.Contains(string(f.Events), part) {
				t.Fatalf("candles events %s lack %s", f.Events, part)
			}
		}
	})

	t.Run("unknown channel gets an error frame", func(t *testing.T) {
		c.send(`{"type":"subscribe","channel":"user","product_ids":["BTC-USD"]}`)
		f := c.next("an error frame", func(f frame) bool { return f.Type == "error" })
		if f.Message != "authentication failure" || f.SequenceNum != nil {
			t.Fatalf("error frame = %+v, want message authentication failure and no sequence_num", f)
		}
		reqs := s.SubscribeRequests()
		if last := reqs[len(reqs)-1]; !last.Rejected || last.Channel != "user" {
			t.Fatalf("last subscribe request = %+v, want the rejected user subscription", last)
		}
	})

	t.Run("unsubscribe without products drops the channel", func(t *testing.T) {
		c.send(`{"type":"unsubscribe","channel":"candles"}`)
		f := c.next("the ack", onChannel("subscriptions"))
		if strings.Contains(string(f.Events), "candles") || s.Subscribed("candles", "BTC-USD") != 0 {
			t.Fatalf("ack %s still lists candles", f.Events)
		}
	})

	t.Run("GoSilent stops heartbeats", func(t *testing.T) {
		s.GoSilent(time.Hour)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		// Ten heartbeat intervals; anything already written may still arrive
		// first, so read until the deadline and allow at most one.
		frames := 0
		for {
			if _, _, err := c.conn.Read(ctx); err != nil {
				break
			}
			frames++
		}
		if frames > 1 {
			t.Fatalf("%d frames arrived while silent", frames)
		}
	})
}

func TestSubscribeDeadlineClosesIdleConnections(t *testing.T) {
	s := fakecoinbase.NewServer(fakecoinbase.WithSubscribeDeadline(50 * time.Millisecond))
	t.Cleanup(s.Close)
	c := dial(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err := c.conn.Read(ctx)
	if status := websocket.CloseStatus(err); status != websocket.StatusPolicyViolation {
		t.Fatalf("read error = %v (status %v), want a policy-violation close", err, status)
	}
}

func TestRESTCandles(t *testing.T) {
	s := fakecoinbase.NewServer()
	t.Cleanup(s.Close)
	from := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	if _, err := s.GenerateCandles("BTC-USD", "ONE_MINUTE", from, 400); err != nil {
		t.Fatal(err)
	}
	path := s.URL + "/api/v3/brokerage/market/products/%s/candles?granularity=%s&start=%d&end=%d"
	start := from.Unix()
	tests := []struct {
		name       string
		url        string
		wantStatus int
		wantBody   string
		wantCount  int
	}{
		{"ten buckets inclusive", fmt.Sprintf(path, "BTC-USD", "ONE_MINUTE", start, start+600), http.StatusOK, "", 11},
		{"350 buckets is accepted", fmt.Sprintf(path, "BTC-USD", "ONE_MINUTE", start, start+350*60), http.StatusOK, "", 350},
		{"351 buckets is refused", fmt.Sprintf(path, "BTC-USD", "ONE_MINUTE", start, start+351*60), http.StatusBadRequest, "number of candles requested should be less than 350", 0},
		{"unknown product", fmt.Sprintf(path, "NOPE-USD", "ONE_MINUTE", start, start+60), http.StatusNotFound, "Product NOPE-USD not supported", 0},
		{"unknown granularity", fmt.Sprintf(path, "BTC-USD", "TEN_MINUTE", start, start+60), http.StatusBadRequest, "granularity", 0},
		{"end before start", fmt.Sprintf(path, "BTC-USD", "ONE_MINUTE", start+60, start), http.StatusBadRequest, "start and end", 0},
		{"start missing", s.URL + "/api/v3/brokerage/market/products/BTC-USD/candles?granularity=ONE_MINUTE&end=1", http.StatusBadRequest, "start and end", 0},
		{"private endpoint without auth", fmt.Sprintf(strings.Replace(path, "/market", "", 1), "BTC-USD", "ONE_MINUTE", start, start+60), http.StatusUnauthorized, "UNAUTHENTICATED", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := get(t, tt.url, "")
			if status != tt.wantStatus || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("GET = %d %s, want %d containing %q", status, body, tt.wantStatus, tt.wantBody)
			}
			if status != http.StatusOK {
				return
			}
			var payload struct {
				Candles []struct{ Start string } `json:"candles"`
			}
			if err := json.Unmarshal([]byte(body), &payload); err != nil {
				t.Fatal(err)
			}
			if len(payload.Candles) != tt.wantCount {
				t.Fatalf("%d candles, want %d", len(payload.Candles), tt.wantCount)
			}
			for i := 1; i < len(payload.Candles); i++ {
				if payload.Candles[i].Start >= payload.Candles[i-1].Start {
					t.Fatalf("candles not newest first at %d: %s then %s", i, payload.Candles[i-1].Start, payload.Candles[i].Start)
				}
			}
		})
	}
	if n := len(s.Requests()); n != len(tests) {
		t.Fatalf("Requests() has %d entries, want %d", n, len(tests))
	}
}

func TestAnswer429(t *testing.T) {
	s := fakecoinbase.NewServer()
	t.Cleanup(s.Close)
	s.AddProduct("BTC-USD")
	s.Answer429WithRetryAfter(2, 3*time.Second)
	url := s.URL + "/api/v3/brokerage/market/products/BTC-USD/candles?granularity=ONE_MINUTE&start=0&end=60"
	tests := []struct {
		status     int
		retryAfter string
	}{
		{http.StatusTooManyRequests, "3"},
		{http.StatusTooManyRequests, "3"},
		{http.StatusOK, ""},
	}
	for i, want := range tests {
		status, body, header := getWithHeader(t, url, "")
		if status != want.status || header.Get("Retry-After") != want.retryAfter {
			t.Fatalf("request %d: %d %s (Retry-After %q), want %d with Retry-After %q", i, status, body, header.Get("Retry-After"), want.status, want.retryAfter)
		}
	}
}

func TestJWTVerification(t *testing.T) {
	const keyName = "organizations/o/apiKeys/k"
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := fakecoinbase.NewServer(fakecoinbase.WithAuth(keyName, &key.PublicKey))
	t.Cleanup(s.Close)
	if _, err := s.GenerateCandles("BTC-USD", "ONE_HOUR", time.Unix(0, 0), 2); err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(s.URL, "http://")
	path := "/api/v3/brokerage/products/BTC-USD/candles"
	goodURI := "GET " + host + path
	now := time.Now()

	type tokenSpec struct {
		method jwt.SigningMethod
		key    any
		header map[string]any
		claims jwt.MapClaims
	}
	valid := func() tokenSpec {
		return tokenSpec{
			method: jwt.SigningMethodES256,
			key:    key,
			header: map[string]any{"kid": keyName, "nonce": "00ff"},
			claims: jwt.MapClaims{"iss": "cdp", "sub": keyName, "nbf": now.Unix(), "exp": now.Add(120 * time.Second).Unix(), "uri": goodURI},
		}
	}
	tests := []struct {
		name       string
		edit       func(*tokenSpec)
		wantReason string // "" means accepted
	}{
		{"valid", func(*tokenSpec) {}, ""},
		{"signed by another key", func(s *tokenSpec) { s.key = otherKey }, "signature is invalid"},
		{"HS256", func(s *tokenSpec) { s.method, s.key = jwt.SigningMethodHS256, []byte("secret") }, "signing method HS256 is invalid"},
		{"kid missing", func(s *tokenSpec) { delete(s.header, "kid") }, "kid"},
		{"nonce missing", func(s *tokenSpec) { delete(s.header, "nonce") }, "nonce"},
		{"wrong issuer", func(s *tokenSpec) { s.claims["iss"] = "coinbase-cloud" }, "iss"},
		{"wrong subject", func(s *tokenSpec) { s.claims["sub"] = "someone" }, "sub"},
		{"nbf missing", func(s *tokenSpec) { delete(s.claims, "nbf") }, "nbf is missing"},
		{"exp missing", func(s *tokenSpec) { delete(s.claims, "exp") }, "exp"},
		{"lifetime over 120 s", func(s *tokenSpec) { s.claims["exp"] = now.Add(10 * time.Minute).Unix() }, "more than 2m0s"},
		{"expired", func(s *tokenSpec) {
			s.claims["nbf"], s.claims["exp"] = now.Add(-5*time.Minute).Unix(), now.Add(-3*time.Minute).Unix()
		}, "expired"},
		{"not yet valid", func(s *tokenSpec) {
			s.claims["nbf"], s.claims["exp"] = now.Add(time.Minute).Unix(), now.Add(3*time.Minute).Unix()
		}, "not valid yet"},
		{"uri missing", func(s *tokenSpec) { delete(s.claims, "uri") }, "uri is missing"},
		{"uri with another method", func(s *tokenSpec) { s.claims["uri"] = "POST " + host + path }, "claim uri"},
		{"uri with a query", func(s *tokenSpec) { s.claims["uri"] = goodURI + "?granularity=ONE_HOUR" }, "claim uri"},
		{"uri for another host", func(s *tokenSpec) { s.claims["uri"] = "GET api.coinbase.com" + path }, "claim uri"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := valid()
			tt.edit(&spec)
			token := jwt.NewWithClaims(spec.method, spec.claims)
			for k, v := range spec.header {
				token.Header[k] = v
			}
			signed, err := token.SignedString(spec.key)
			if err != nil {
				t.Fatal(err)
			}
			before := len(s.AuthFailures())
			status, body := get(t, s.URL+path+"?granularity=ONE_HOUR&start=0&end=3600", signed)
			if tt.wantReason == "" {
				if status != http.StatusOK {
					t.Fatalf("status %d %s, want 200", status, body)
				}
				return
			}
			failures := s.AuthFailures()
			if status != http.StatusUnauthorized || len(failures) != before+1 || !strings.Contains(failures[before], tt.wantReason) {
				t.Fatalf("status %d, failures %v: want 401 with a reason containing %q", status, failures[before:], tt.wantReason)
			}
		})
	}
}

func TestMaxRequestsPerWindow(t *testing.T) {
	s := fakecoinbase.NewServer()
	t.Cleanup(s.Close)
	s.AddProduct("BTC-USD")
	url := s.URL + "/api/v3/brokerage/market/products/BTC-USD/candles?granularity=ONE_MINUTE&start=0&end=60"
	for range 5 {
		get(t, url, "")
	}
	if got := s.MaxRequestsPerWindow(time.Minute); got != 5 {
		t.Fatalf("MaxRequestsPerWindow(1m) = %d after a burst of 5, want 5", got)
	}
	if got := s.MaxRequestsPerWindow(time.Nanosecond); got != 1 {
		t.Fatalf("MaxRequestsPerWindow(1ns) = %d, want 1", got)
	}
}

func TestGenerateCandles(t *testing.T) {
	s := fakecoinbase.NewServer()
	t.Cleanup(s.Close)
	from := time.Date(2026, 1, 5, 0, 7, 0, 0, time.UTC)
	a, err := s.GenerateCandles("BTC-USD", "FIVE_MINUTE", from, 100)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.GenerateCandles("BTC-USD", "FIVE_MINUTE", from, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		c := a[i]
		if c != b[i] {
			t.Fatalf("candle %d differs between equal calls: %+v vs %+v", i, c, b[i])
		}
		if want := time.Date(2026, 1, 5, 0, 5, 0, 0, time.UTC).Add(time.Duration(i) * 5 * time.Minute); !c.Start.Equal(want) {
			t.Fatalf("candle %d starts %v, want %v", i, c.Start, want)
		}
		if c.Low > c.High || c.Open < c.Low || c.Open > c.High || c.Close < c.Low || c.Close > c.High || c.Volume < 0 {
			t.Fatalf("candle %d is inconsistent: %+v", i, c)
		}
	}
	if _, err := s.GenerateCandles("BTC-USD", "TEN_MINUTE", from, 1); !errors.Is(err, fakecoinbase.ErrUnknownGranularity) {
		t.Fatalf("unknown granularity error = %v", err)
	}
	if _, err := s.GenerateCandles("BTC-USD", "ONE_DAY", from, -1); !errors.Is(err, fakecoinbase.ErrInvalidArgument) {
		t.Fatalf("negative n error = %v", err)
	}
}

// get performs a GET with an optional bearer token and returns status and body.
func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	status, body, _ := getWithHeader(t, url, token)
	return status, body
}

func getWithHeader(t *testing.T, url, token string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body), resp.Header
}
