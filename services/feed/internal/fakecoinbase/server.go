// Package fakecoinbase is an in-process fake of Coinbase Advanced Trade for
// tests: one loopback HTTP server that speaks the market-data WebSocket
// protocol on "/" and serves REST candles from an in-memory store, with
// fault injection (dropped connections, sequence jumps, silence, 429s, raw
// frames) and records of what clients sent.
//
// It is written from the protocol notes, independently of package coinbase,
// so that a misunderstanding in the client does not hide in a shared type.
package fakecoinbase

import (
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// Sentinel errors.
var (
	// ErrUnknownGranularity means a granularity is not one of the API's enum values.
	ErrUnknownGranularity = errors.New("fakecoinbase: unknown granularity")
	// ErrInvalidArgument means a generator argument is out of range.
	ErrInvalidArgument = errors.New("fakecoinbase: invalid argument")
)

// Defaults for the options.
const (
	// DefaultHeartbeatInterval is how often heartbeats are sent, as on the real venue.
	DefaultHeartbeatInterval = time.Second
	// DefaultSubscribeDeadline is how long a connection may stay without a subscribe.
	DefaultSubscribeDeadline = 5 * time.Second
	// MaxBuckets is the most buckets one REST candles request may span.
	MaxBuckets = 350
)

// Option configures a Server.
type Option func(*config)

type config struct {
	heartbeatInterval time.Duration
	subscribeDeadline time.Duration
	authKeyName       string
	authKey           *ecdsa.PublicKey
}

// WithHeartbeatInterval sets how often heartbeats are sent to subscribed connections.
func WithHeartbeatInterval(d time.Duration) Option {
	return func(c *config) { c.heartbeatInterval = d }
}

// WithSubscribeDeadline sets how long a connection may go without subscribing
// before the server closes it.
func WithSubscribeDeadline(d time.Duration) Option {
	return func(c *config) { c.subscribeDeadline = d }
}

// WithAuth turns on JWT verification: the private REST endpoint requires a
// valid ES256 token signed by key with kid and sub keyName, and WebSocket
// messages that carry a jwt must carry a valid one.
func WithAuth(keyName string, key *ecdsa.PublicKey) Option {
	return func(c *config) { c.authKeyName, c.authKey = keyName, key }
}

// Request is one REST request the server received.
type Request struct {
	// At is when the request arrived.
	At time.Time
	// Method and Path are the request's method and URL path.
	Method, Path string
	// Query is the parsed query string.
	Query url.Values
	// Status is the HTTP status answered.
	Status int
}

// SubscribeRequest is one subscribe or unsubscribe message a client sent.
type SubscribeRequest struct {
	// At is when the message arrived.
	At time.Time
	// Type is "subscribe" or "unsubscribe".
	Type string
	// Channel is the channel named.
	Channel string
	// Products are the product_ids sent.
	Products []string
	// HasJWT is true when the message carried a jwt.
	HasJWT bool
	// Rejected is true when the server answered with an error frame.
	Rejected bool
}

// Server is a running fake exchange. Its methods are safe for concurrent use.
type Server struct {
	// URL is the REST base URL, "http://127.0.0.1:port".
	URL string
	// WebSocketURL is the WebSocket URL, "ws://127.0.0.1:port".
	WebSocketURL string

	cfg  config
	http *httptest.Server

	mu           sync.Mutex
	conns        map[*wsConn]struct{}
	accepted     int
	subscribeLog []SubscribeRequest
	store        candleStore
	liveCandles  map[string]Candle
	books        map[string]map[bookKey]float64
	trades       map[string][]Trade
	requests     []Request
	failures     []injectedFailure
	authFailures []string
}

// NewServer starts a fake exchange on a random loopback port. Call Close when done.
func NewServer(opts ...Option) *Server {
	cfg := config{heartbeatInterval: DefaultHeartbeatInterval, subscribeDeadline: DefaultSubscribeDeadline}
	for _, opt := range opts {
		opt(&cfg)
	}
	s := &Server{
		cfg:         cfg,
		conns:       make(map[*wsConn]struct{}),
		store:       candleStore{},
		liveCandles: make(map[string]Candle),
		books:       make(map[string]map[bookKey]float64),
		trades:      make(map[string][]Trade),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v3/brokerage/market/products/{product}/candles", s.handleCandles(false))
	mux.HandleFunc("GET /api/v3/brokerage/products/{product}/candles", s.handleCandles(true))
	mux.HandleFunc("/", s.handleWebSocket)
	s.http = httptest.NewServer(mux)
	s.URL = s.http.URL
	s.WebSocketURL = "ws" + strings.TrimPrefix(s.http.URL, "http")
	return s
}

// Close drops every WebSocket connection and stops the server.
func (s *Server) Close() {
	s.DropConnections()
	s.http.Close()
}

// Connections returns how many WebSocket connections are open.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Accepted returns how many WebSocket connections were accepted in total.
func (s *Server) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// SubscribeRequests returns every subscribe and unsubscribe message received, in order.
func (s *Server) SubscribeRequests() []SubscribeRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.subscribeLog)
}

// SubscribeCount counts the logged subscribe requests of typ (subscribe or
// unsubscribe) on channel that name product.
func (s *Server) SubscribeCount(typ, channel, product string) int {
	n := 0
	for _, r := range s.SubscribeRequests() {
		if r.Type == typ && r.Channel == channel && slices.Contains(r.Products, product) {
			n++
		}
	}
	return n
}

// Subscribed returns how many open connections are subscribed to product on
// channel (use product "heartbeats" for the heartbeats channel).
func (s *Server) Subscribed(channel, product string) int {
	n := 0
	for _, c := range s.openConns() {
		if c.subscribed(channel, product) {
			n++
		}
	}
	return n
}

// Requests returns every REST request received, in arrival order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.requests)
	slices.SortStableFunc(out, func(a, b Request) int { return a.At.Compare(b.At) })
	return out
}

// MaxRequestsPerWindow returns the largest number of REST requests that
// arrived within any window of the given length ([t, t+window)).
func (s *Server) MaxRequestsPerWindow(window time.Duration) int {
	requests := s.Requests()
	best, lo := 0, 0
	for hi := range requests {
		for requests[hi].At.Sub(requests[lo].At) >= window {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

// AuthFailures returns why each rejected JWT was rejected, in order.
func (s *Server) AuthFailures() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.authFailures)
}

// injectedFailure is an answer queued for the next REST request.
type injectedFailure struct {
	status     int
	body       restError
	retryAfter time.Duration
}

// Answer429 makes the next n REST requests fail with 429 and no Retry-After.
func (s *Server) Answer429(n int) {
	s.Answer429WithRetryAfter(n, 0)
}

// Answer429WithRetryAfter makes the next n REST requests fail with 429 and,
// when retryAfter > 0, a Retry-After header of that many whole seconds.
func (s *Server) Answer429WithRetryAfter(n int, retryAfter time.Duration) {
	s.queueFailures(n, injectedFailure{
		status:     http.StatusTooManyRequests,
		body:       restError{Error: "RATE_LIMIT_EXCEEDED", Message: "Too many requests"},
		retryAfter: retryAfter,
	})
}

// AnswerError makes the next n REST requests fail with status and an error
// body {"error": code, "message": details, "error_details": details}.
func (s *Server) AnswerError(n, status int, code, details string) {
	s.queueFailures(n, injectedFailure{status: status, body: restError{Error: code, Message: details, ErrorDetails: details}})
}

func (s *Server) queueFailures(n int, f injectedFailure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.failures = append(s.failures, f)
	}
}

// DropConnections closes every open WebSocket connection abruptly (no close
// frame) and returns how many there were.
func (s *Server) DropConnections() int {
	conns := s.openConns()
	for _, c := range conns {
		c.ws.CloseNow()
	}
	return len(conns)
}

// SkipSequence makes the next frame on every open connection jump n sequence
// numbers ahead.
func (s *Server) SkipSequence(n int64) {
	for _, c := range s.openConns() {
		c.mu.Lock()
		c.skip += n
		c.mu.Unlock()
	}
}

// GoSilent makes every open connection send nothing, heartbeats included,
// for d; frames due in that time are dropped. New connections are not affected.
func (s *Server) GoSilent(d time.Duration) {
	until := time.Now().Add(d)
	for _, c := range s.openConns() {
		c.mu.Lock()
		c.silentUntil = until
		c.mu.Unlock()
	}
}

// InjectFrame sends a sequenced frame of channel with events (raw JSON, sent
// as is) to every open connection that is not silenced, and returns how many
// connections it was sent to. It lets tests send well-sequenced frames with
// payloads the real exchange would never send.
func (s *Server) InjectFrame(channel string, events json.RawMessage) int {
	n := 0
	for _, c := range s.openConns() {
		if c.send(channel, events) {
			n++
		}
	}
	return n
}

// InjectRaw sends data as one text message to every open connection, as is,
// and returns how many connections it was sent to.
func (s *Server) InjectRaw(data []byte) int {
	n := 0
	for _, c := range s.openConns() {
		if c.writeRaw(data) == nil {
			n++
		}
	}
	return n
}

func (s *Server) openConns() []*wsConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*wsConn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}
