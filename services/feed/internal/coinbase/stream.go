package coinbase

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"
	"vigil.dev/pkg/wait"
)

// DefaultWebSocketURL is Coinbase Advanced Trade's public market-data endpoint.
const DefaultWebSocketURL = "wss://advanced-trade-ws.coinbase.com"

// Stream defaults, used when the StreamConfig field is zero.
const (
	// DefaultSilenceTimeout is how long the watchdog waits for any frame;
	// heartbeats arrive every second.
	DefaultSilenceTimeout = 10 * time.Second
	// DefaultReconnectBase is the first reconnect delay.
	DefaultReconnectBase = 500 * time.Millisecond
	// DefaultReconnectMax caps the reconnect delay.
	DefaultReconnectMax = 30 * time.Second
	// DefaultMaxMessageBytes is the largest frame decoded (the SDK's 10 MiB).
	DefaultMaxMessageBytes = 10 << 20
	// DefaultDialTimeout bounds one WebSocket handshake.
	DefaultDialTimeout = 10 * time.Second
	// DefaultWriteTimeout bounds writing one subscribe or unsubscribe message.
	DefaultWriteTimeout = 5 * time.Second
	// DefaultMessagesPerSecond is Coinbase's limit on unauthenticated messages per IP.
	DefaultMessagesPerSecond = 8
)

// ErrMessageTooLarge means a frame was longer than StreamConfig.MaxMessageBytes;
// it was skipped without decoding.
var ErrMessageTooLarge = errors.New("coinbase: message too large")

// StreamConfig configures a Stream. Zero fields take the defaults above.
type StreamConfig struct {
	// URL is the WebSocket endpoint; default DefaultWebSocketURL.
	URL string
	// Handler receives every event; required.
	Handler Handler
	// Credentials, when set, sign every subscribe and unsubscribe message.
	Credentials *Credentials
	// Logger receives connection and bad-frame reports; default slog.Default().
	Logger *slog.Logger
	// SilenceTimeout: with no frame for this long the connection is dropped and redialled.
	SilenceTimeout time.Duration
	// ReconnectBase is the first reconnect delay; each failed dial doubles it.
	ReconnectBase time.Duration
	// ReconnectMax caps the reconnect delay. A connection that stayed up this
	// long resets the delay to ReconnectBase.
	ReconnectMax time.Duration
	// MaxMessageBytes: longer frames are counted as oversized and skipped.
	MaxMessageBytes int64
	// DialTimeout bounds one handshake.
	DialTimeout time.Duration
	// WriteTimeout bounds writing one message.
	WriteTimeout time.Duration
	// MessagesPerSecond caps subscribe and unsubscribe messages sent
	// (paced evenly, 5 % below the value, so no one-second window exceeds it).
	MessagesPerSecond float64
}

// StreamStats is a snapshot of a Stream's state and counters. Counters only grow.
type StreamStats struct {
	// Connected is true while a connection is up.
	Connected bool
	// ConnectedSince is when the current connection was established (zero when down).
	ConnectedSince time.Time
	// Frames counts every frame received, good or bad.
	Frames uint64
	// Malformed counts frames that were not valid JSON or had wrong or missing fields.
	Malformed uint64
	// Oversized counts frames longer than MaxMessageBytes.
	Oversized uint64
	// UnknownChannel counts frames of a channel this client does not handle.
	UnknownChannel uint64
	// ErrorFrames counts error frames sent by the exchange.
	ErrorFrames uint64
	// OutOfOrder counts frames whose sequence number went backwards (they are dropped).
	OutOfOrder uint64
	// Gaps counts sequence-number jumps.
	Gaps uint64
	// Reconnects counts connections re-established after one was lost.
	Reconnects uint64
	// SilenceTimeouts counts connections dropped by the watchdog.
	SilenceTimeouts uint64
	// DialFailures counts failed handshakes.
	DialFailures uint64
	// MessagesSent counts subscribe and unsubscribe messages written.
	MessagesSent uint64
}

// Freshness is the last time data arrived for one subscription.
type Freshness struct {
	// Channel is the subscribed channel.
	Channel Channel
	// Product is the product id ("" for heartbeats).
	Product string
	// Subscribers is the reference count (1 for heartbeats, always subscribed).
	Subscribers int
	// LastMessage is when data last arrived; zero if none yet.
	LastMessage time.Time
}

// Stream is a Coinbase Advanced Trade WebSocket market-data client. Run
// keeps one connection up; Subscribe and Unsubscribe may be called at any
// time from any goroutine, before or during Run.
type Stream struct {
	cfg     StreamConfig
	log     *slog.Logger
	limiter *rate.Limiter
	running atomic.Bool

	mu             sync.Mutex
	refs           map[Channel]map[string]int
	lastMessage    map[subscriptionKey]time.Time
	session        *session
	connectedSince time.Time

	counters struct {
		frames, malformed, oversized, unknownChannel, errorFrames, outOfOrder,
		gaps, reconnects, silenceTimeouts, dialFailures, messagesSent atomic.Uint64
	}
}

// session is one live connection. wake asks its reconciler to bring the
// upstream subscriptions in line with the reference counts; resync asks it to
// unsubscribe and resubscribe everything first (after a sequence gap).
type session struct {
	conn   *websocket.Conn
	wake   chan struct{}
	resync atomic.Bool
}

func (sess *session) poke() {
	select {
	case sess.wake <- struct{}{}:
	default:
	}
}

// NewStream checks cfg, fills in defaults and returns a Stream that is not
// yet connected. Errors wrap ErrInvalidConfig.
func NewStream(cfg StreamConfig) (*Stream, error) {
	if cfg.Handler == nil {
		return nil, fmt.Errorf("%w: Handler is nil", ErrInvalidConfig)
	}
	if cfg.URL == "" {
		cfg.URL = DefaultWebSocketURL
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return nil, fmt.Errorf("%w: URL %q is not a ws:// or wss:// URL", ErrInvalidConfig, cfg.URL)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	durations := []struct {
		name  string
		value *time.Duration
		def   time.Duration
	}{
		{"SilenceTimeout", &cfg.SilenceTimeout, DefaultSilenceTimeout},
		{"ReconnectBase", &cfg.ReconnectBase, DefaultReconnectBase},
		{"ReconnectMax", &cfg.ReconnectMax, DefaultReconnectMax},
		{"DialTimeout", &cfg.DialTimeout, DefaultDialTimeout},
		{"WriteTimeout", &cfg.WriteTimeout, DefaultWriteTimeout},
	}
	for _, d := range durations {
		if *d.value < 0 {
			return nil, fmt.Errorf("%w: %s is negative (%v)", ErrInvalidConfig, d.name, *d.value)
		}
		if *d.value == 0 {
			*d.value = d.def
		}
	}
	if cfg.ReconnectMax < cfg.ReconnectBase {
		return nil, fmt.Errorf("%w: ReconnectMax %v is below ReconnectBase %v", ErrInvalidConfig, cfg.ReconnectMax, cfg.ReconnectBase)
	}
	switch {
	case cfg.MaxMessageBytes < 0:
		return nil, fmt.Errorf("%w: MaxMessageBytes is negative (%d)", ErrInvalidConfig, cfg.MaxMessageBytes)
	case cfg.MaxMessageBytes == 0:
		cfg.MaxMessageBytes = DefaultMaxMessageBytes
	}
	switch {
	case cfg.MessagesPerSecond < 0:
		return nil, fmt.Errorf("%w: MessagesPerSecond is negative (%v)", ErrInvalidConfig, cfg.MessagesPerSecond)
	case cfg.MessagesPerSecond == 0:
		cfg.MessagesPerSecond = DefaultMessagesPerSecond
	}
	return &Stream{
		cfg:         cfg,
		log:         cfg.Logger.With("component", "coinbase-ws", "url", cfg.URL),
		limiter:     newPacedLimiter(cfg.MessagesPerSecond),
		refs:        make(map[Channel]map[string]int),
		lastMessage: make(map[subscriptionKey]time.Time),
	}, nil
}

// Freshness lists heartbeats and every subscribed (channel, product) with
// when data last arrived, sorted by channel then product.
func (s *Stream) Freshness() []Freshness {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Freshness{{
		Channel:     ChannelHeartbeats,
		Subscribers: 1,
		LastMessage: s.lastMessage[subscriptionKey{channel: ChannelHeartbeats}],
	}}
	for channel, products := range s.refs {
		for product, n := range products {
			out = append(out, Freshness{
				Channel:     channel,
				Product:     product,
				Subscribers: n,
				LastMessage: s.lastMessage[subscriptionKey{channel, product}],
			})
		}
	}
	slices.SortFunc(out, func(a, b Freshness) int {
		if a.Channel != b.Channel {
			if a.Channel < b.Channel {
				return -1
			}
			return 1
		}
		if a.Product < b.Product {
			return -1
		}
		if a.Product > b.Product {
			return 1
		}
		return 0
	})
	return out
}

// Stats returns the current state and counters.
func (s *Stream) Stats() StreamStats {
	s.mu.Lock()
	connected, since := s.session != nil, s.connectedSince
	s.mu.Unlock()
	c := &s.counters
	return StreamStats{
		Connected:       connected,
		ConnectedSince:  since,
		Frames:          c.frames.Load(),
		Malformed:       c.malformed.Load(),
		Oversized:       c.oversized.Load(),
		UnknownChannel:  c.unknownChannel.Load(),
		ErrorFrames:     c.errorFrames.Load(),
		OutOfOrder:      c.outOfOrder.Load(),
		Gaps:            c.gaps.Load(),
		Reconnects:      c.reconnects.Load(),
		SilenceTimeouts: c.silenceTimeouts.Load(),
		DialFailures:    c.dialFailures.Load(),
		MessagesSent:    c.messagesSent.Load(),
	}
}

// Run connects, subscribes and delivers events to the Handler until ctx is
// done, reconnecting with jittered exponential backoff whenever the
// connection fails, goes silent or cannot be established. It returns nil
// once ctx is done, or ErrAlreadyRunning if another Run is active.
func (s *Stream) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer s.running.Store(false)

	var (
		lost  *ReconnectedEvent // the lost connection not yet reported
		step  int               // backoff step; 0 dials at once
		dials int               // dials since the connection was lost
	)
	for {
		if step > 0 && !wait.Sleep(ctx, jitteredBackoff(step, s.cfg.ReconnectBase, s.cfg.ReconnectMax)) {
			return nil
		}
		dials++
		conn, err := s.dial(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.counters.dialFailures.Add(1)
			s.log.Warn("coinbase websocket dial failed", "attempt", dials, "error", err)
			step++
			continue
		}
		connectedAt := time.Now()
		if lost != nil {
			lost.To, lost.Attempts = connectedAt, dials
			s.counters.reconnects.Add(1)
			s.log.Info("coinbase websocket reconnected", "down_from", lost.From, "down_to", lost.To, "attempts", dials, "cause", lost.Cause)
			s.cfg.Handler.HandleEvent(lost)
		}
		lastFrame, cause := s.serve(ctx, conn, connectedAt)
		if ctx.Err() != nil {
			return nil
		}
		s.log.Warn("coinbase websocket connection lost", "error", cause, "last_frame", lastFrame)
		lost = &ReconnectedEvent{From: lastFrame, Cause: cause}
		dials = 0
		if time.Since(connectedAt) >= s.cfg.ReconnectMax {
			step = 0
		}
		step++
	}
}

func (s *Stream) dial(ctx context.Context) (*websocket.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(dctx, s.cfg.URL, nil)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return nil, err
	}
	// The library's own limit would close the connection on a big frame;
	// readFrame enforces MaxMessageBytes and skips such frames instead.
	conn.SetReadLimit(-1)
	return conn, nil
}

// sequenceTracker follows one connection's sequence_num.
type sequenceTracker struct {
	next      int64     // the sequence number expected next
	lastFrame time.Time // when the last frame arrived
}

// serve runs one connection until it fails or ctx is done. It returns when
// the last frame arrived (or connectedAt) and why the connection ended.
func (s *Stream) serve(ctx context.Context, conn *websocket.Conn, connectedAt time.Time) (time.Time, error) {
	sctx, cancel := context.WithCancel(ctx)
	sess := &session{conn: conn, wake: make(chan struct{}, 1)}
	sess.poke()
	s.mu.Lock()
	s.session, s.connectedSince = sess, connectedAt
	s.mu.Unlock()

	var reconciler sync.WaitGroup
	reconciler.Go(func() { s.reconcile(sctx, sess) })
	defer func() {
		s.mu.Lock()
		s.session, s.connectedSince = nil, time.Time{}
		s.mu.Unlock()
		cancel()
		if ctx.Err() != nil {
			conn.Close(websocket.StatusNormalClosure, "client shutting down")
		} else {
			conn.CloseNow()
		}
		reconciler.Wait()
	}()

	tracker := sequenceTracker{lastFrame: connectedAt}
	for {
		data, err := s.readFrame(sctx, conn)
		now := time.Now()
		switch {
		case errors.Is(err, ErrMessageTooLarge):
			s.counters.frames.Add(1)
			s.counters.oversized.Add(1)
			s.log.Warn("coinbase websocket frame dropped", "error", err)
			tracker.lastFrame = now
			continue
		case err != nil:
			return tracker.lastFrame, err
		}
		s.counters.frames.Add(1)
		s.handleFrame(sess, &tracker, data, now)
		tracker.lastFrame = now
	}
}

// readFrame reads one message under the silence timeout. Messages longer
// than MaxMessageBytes are drained and reported as ErrMessageTooLarge.
func (s *Stream) readFrame(ctx context.Context, conn *websocket.Conn) ([]byte, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.SilenceTimeout)
	defer cancel()
	silent := func(err error) error {
		if ctx.Err() == nil && errors.Is(rctx.Err(), context.DeadlineExceeded) {
			s.counters.silenceTimeouts.Add(1)
			return fmt.Errorf("%w: no frame for %v", ErrSilence, s.cfg.SilenceTimeout)
		}
		return err
	}
	_, r, err := conn.Reader(rctx)
	if err != nil {
		return nil, silent(err)
	}
	data, err := io.ReadAll(io.LimitReader(r, s.cfg.MaxMessageBytes+1))
	if err != nil {
		return nil, silent(err)
	}
	if int64(len(data)) > s.cfg.MaxMessageBytes {
		rest, err := io.Copy(io.Discard, r)
		if err != nil {
			return nil, silent(err)
		}
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMessageTooLarge, int64(len(data))+rest, s.cfg.MaxMessageBytes)
	}
	return data, nil
}

// handleFrame decodes one frame, tracks its sequence number and delivers its events.
func (s *Stream) handleFrame(sess *session, tracker *sequenceTracker, data []byte, now time.Time) {
	f, err := decodeFrame(data)
	if f.hasSeq && !s.checkSequence(sess, tracker, f.seq, now) {
		return
	}
	if err != nil {
		if errors.Is(err, ErrUnknownChannel) {
			s.counters.unknownChannel.Add(1)
		} else {
			s.counters.malformed.Add(1)
		}
		s.log.Warn("coinbase websocket frame dropped", "error", err, "bytes", len(data), "frame", preview(data))
		return
	}
	for _, ev := range f.events {
		if e, ok := ev.(*ErrorEvent); ok {
			s.counters.errorFrames.Add(1)
			s.log.Warn("coinbase websocket error frame", "message", e.Message)
		}
		s.touch(ev, now)
		s.cfg.Handler.HandleEvent(ev)
	}
}

// checkSequence reports a jump as a GapEvent and asks for a resubscribe; it
// returns false for a frame that went backwards, which is dropped.
func (s *Stream) checkSequence(sess *session, tracker *sequenceTracker, seq int64, now time.Time) bool {
	expected := tracker.next
	switch {
	case seq < expected:
		s.counters.outOfOrder.Add(1)
		s.log.Warn("coinbase websocket frame out of order", "expected", expected, "got", seq)
		return false
	case seq > expected:
		s.counters.gaps.Add(1)
		s.log.Warn("coinbase websocket sequence gap, resubscribing", "expected", expected, "got", seq, "from", tracker.lastFrame)
		s.cfg.Handler.HandleEvent(&GapEvent{Expected: expected, Got: seq, From: tracker.lastFrame, To: now})
		sess.resync.Store(true)
		sess.poke()
	}
	tracker.next = seq + 1
	return true
}

// touch records when data arrived for the subscriptions an event belongs to.
func (s *Stream) touch(ev Event, now time.Time) {
	var keys []subscriptionKey
	switch e := ev.(type) {
	case *CandlesEvent:
		for _, c := range e.Candles {
			keys = append(keys, subscriptionKey{ChannelCandles, c.Product})
		}
	case *Level2Event:
		keys = append(keys, subscriptionKey{ChannelLevel2, e.Product})
	case *TradesEvent:
		for _, t := range e.Trades {
			keys = append(keys, subscriptionKey{ChannelMarketTrades, t.Product})
		}
	case *HeartbeatEvent:
		keys = append(keys, subscriptionKey{channel: ChannelHeartbeats})
	}
	if len(keys) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		if k.channel == ChannelHeartbeats || s.refs[k.channel][k.product] > 0 {
			s.lastMessage[k] = now
		}
	}
}

// preview returns the start of a frame for logs.
func preview(data []byte) string {
	const limit = 200
	if len(data) > limit {
		return string(data[:limit]) + "…"
	}
	return string(data)
}
