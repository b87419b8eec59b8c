package fakecoinbase

import (
	"cmp"
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// writeTimeout bounds one frame write, so a stuck client cannot stall the fake.
const writeTimeout = 2 * time.Second

// maxTradesKept is how many recent trades per product the snapshot replays.
const maxTradesKept = 50

// channelFrameName maps subscribable channels to the channel name their
// frames carry.
var channelFrameName = map[string]string{
	"candles":       "candles",
	"heartbeats":    "heartbeats",
	"level2":        "l2_data",
	"market_trades": "market_trades",
}

// wsConn is one client connection with its own sequence counter.
type wsConn struct {
	server *Server
	ws     *websocket.Conn

	mu             sync.Mutex // guards the fields below and orders writes
	seq            int64
	skip           int64
	silentUntil    time.Time
	subs           map[string]map[string]bool
	heartbeatCount int64
	hasSubscribed  bool
}

type envelope struct {
	Channel     string `json:"channel"`
	ClientID    string `json:"client_id"`
	Timestamp   string `json:"timestamp"`
	SequenceNum int64  `json:"sequence_num"`
	Events      any    `json:"events"`
}

type clientMessage struct {
	Type       string   `json:"type"`
	ProductIDs []string `json:"product_ids"`
	Channel    string   `json:"channel"`
	JWT        string   `json:"jwt"`
}

type wireCandle struct {
	Start     string `json:"start"`
	High      string `json:"high"`
	Low       string `json:"low"`
	Open      string `json:"open"`
	Close     string `json:"close"`
	Volume    string `json:"volume"`
	ProductID string `json:"product_id"`
}

type wireLevel struct {
	Side        string `json:"side"`
	EventTime   string `json:"event_time"`
	PriceLevel  string `json:"price_level"`
	NewQuantity string `json:"new_quantity"`
}

type wireTrade struct {
	TradeID   string `json:"trade_id"`
	ProductID string `json:"product_id"`
	Price     string `json:"price"`
	Size      string `json:"size"`
	Side      string `json:"side"`
	Time      string `json:"time"`
}

func (s *Server) handleWebSocket(w http.ResponseWriter, r *http.Request) {
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept has answered the request
	}
	c := &wsConn{server: s, ws: ws, subs: make(map[string]map[string]bool)}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.accepted++
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	var heartbeats sync.WaitGroup
	heartbeats.Go(func() { c.heartbeatLoop(ctx) })
	deadline := time.AfterFunc(s.cfg.subscribeDeadline, func() {
		c.mu.Lock()
		subscribed := c.hasSubscribed
		c.mu.Unlock()
		if !subscribed {
			ws.Close(websocket.StatusPolicyViolation, "no subscribe message within the deadline")
		}
	})
	defer func() {
		deadline.Stop()
		cancel()
		heartbeats.Wait()
		ws.CloseNow()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	for {
		_, data, err := ws.Read(ctx)
		if err != nil {
			return
		}
		c.handleMessage(data)
	}
}

func (c *wsConn) heartbeatLoop(ctx context.Context) {
	ticker := time.NewTicker(c.server.cfg.heartbeatInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			c.mu.Lock()
			on := c.subs["heartbeats"] != nil
			c.heartbeatCount++
			count := c.heartbeatCount
			c.mu.Unlock()
			if on {
				c.send("heartbeats", []map[string]any{{
					"current_time":      now.UTC().String(),
					"heartbeat_counter": count,
				}})
			}
		}
	}
}

// handleMessage applies one subscribe or unsubscribe message.
func (c *wsConn) handleMessage(data []byte) {
	s := c.server
	var msg clientMessage
	decodeErr := json.Unmarshal(data, &msg)
	rec := SubscribeRequest{At: time.Now(), Type: msg.Type, Channel: msg.Channel, Products: msg.ProductIDs, HasJWT: msg.JWT != ""}
	_, known := channelFrameName[msg.Channel]
	reason := ""
	switch {
	case decodeErr != nil, msg.Type != "subscribe" && msg.Type != "unsubscribe":
		reason = "failure to subscribe"
	case msg.JWT != "" && s.cfg.authKey != nil && !s.acceptWebSocketJWT(msg.JWT):
		reason = "authentication failure"
	case !known:
		reason = "authentication failure" // what Coinbase answers for an unknown channel
	case msg.Type == "subscribe" && msg.Channel != "heartbeats" && len(msg.ProductIDs) == 0:
		reason = "failure to subscribe"
	}
	rec.Rejected = reason != ""
	s.mu.Lock()
	s.subscribeLog = append(s.subscribeLog, rec)
	s.mu.Unlock()
	if rec.Rejected {
		c.writeRaw([]byte(`{"type":"error","message":"` + reason + `"}`))
		return
	}

	c.mu.Lock()
	c.hasSubscribed = true
	var added []string
	switch {
	case msg.Type == "subscribe" && msg.Channel == "heartbeats":
		c.subs["heartbeats"] = map[string]bool{"heartbeats": true}
	case msg.Type == "subscribe":
		if c.subs[msg.Channel] == nil {
			c.subs[msg.Channel] = make(map[string]bool)
		}
		for _, p := range msg.ProductIDs {
			if !c.subs[msg.Channel][p] {
				added = append(added, p)
			}
			c.subs[msg.Channel][p] = true
		}
	case len(msg.ProductIDs) == 0 || msg.Channel == "heartbeats":
		delete(c.subs, msg.Channel)
	default:
		for _, p := range msg.ProductIDs {
			delete(c.subs[msg.Channel], p)
		}
		if len(c.subs[msg.Channel]) == 0 {
			delete(c.subs, msg.Channel)
		}
	}
	ack := make(map[string][]string, len(c.subs))
	for channel, products := range c.subs {
		ack[channel] = slices.Sorted(maps.Keys(products))
	}
	c.mu.Unlock()

	c.send("subscriptions", []map[string]any{{"subscriptions": ack}})
	for _, product := range added {
		c.sendSnapshot(msg.Channel, product)
	}
}

// acceptWebSocketJWT verifies a subscribe message's jwt and records a rejection.
func (s *Server) acceptWebSocketJWT(token string) bool {
	if err := s.verifyJWT(token, ""); err != nil {
		s.recordAuthFailure(err)
		return false
	}
	return true
}

// sendSnapshot sends the current state of one product after a subscribe.
func (c *wsConn) sendSnapshot(channel, product string) {
	s := c.server
	s.mu.Lock()
	var events any
	switch channel {
	case "candles":
		candles := []wireCandle{}
		if live, ok := s.liveCandles[product]; ok {
			candles = append(candles, toWireCandle(product, live))
		}
		events = []map[string]any{{"type": "snapshot", "candles": candles}}
	case "level2":
		events = []map[string]any{{"type": "snapshot", "product_id": product, "updates": bookLevels(s.books[product], time.Now())}}
	case "market_trades":
		trades := []wireTrade{}
		for _, t := range slices.Backward(s.trades[product]) {
			trades = append(trades, toWireTrade(product, t))
		}
		events = []map[string]any{{"type": "snapshot", "trades": trades}}
	}
	s.mu.Unlock()
	c.send(channelFrameName[channel], events)
}

func bookLevels(book map[bookKey]float64, at time.Time) []wireLevel {
	levels := make([]wireLevel, 0, len(book))
	for k, q := range book {
		levels = append(levels, wireLevel{Side: k.side, EventTime: at.UTC().Format(time.RFC3339Nano), PriceLevel: decimal(k.price), NewQuantity: decimal(q)})
	}
	slices.SortFunc(levels, func(a, b wireLevel) int {
		return cmp.Or(cmp.Compare(a.Side, b.Side), cmp.Compare(a.PriceLevel, b.PriceLevel))
	})
	return levels
}

func toWireCandle(product string, c Candle) wireCandle {
	return wireCandle{
		Start: strconv.FormatInt(c.Start.Unix(), 10),
		High:  decimal(c.High), Low: decimal(c.Low), Open: decimal(c.Open), Close: decimal(c.Close),
		Volume: decimal(c.Volume), ProductID: product,
	}
}

func toWireTrade(product string, t Trade) wireTrade {
	return wireTrade{
		TradeID: t.ID, ProductID: product, Price: decimal(t.Price), Size: decimal(t.Size),
		Side: t.Side, Time: t.Time.UTC().Format(time.RFC3339Nano),
	}
}

// subscribed reports whether the connection is subscribed to product on channel.
func (c *wsConn) subscribed(channel, product string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subs[channel][product]
}

// send writes one sequenced frame unless the connection is silenced, and
// reports whether it was written. A failed write closes the connection.
func (c *wsConn) send(channel string, events any) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Now().Before(c.silentUntil) {
		return false
	}
	seq := c.seq + c.skip
	c.seq, c.skip = seq+1, 0
	data, err := json.Marshal(envelope{
		Channel:     channel,
		Timestamp:   time.Now().UTC().Format(time.RFC3339Nano),
		SequenceNum: seq,
		Events:      events,
	})
	if err != nil {
		c.ws.CloseNow()
		return false
	}
	return c.write(data) == nil
}

// writeRaw writes data as is, bypassing sequencing and silence.
func (c *wsConn) writeRaw(data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.write(data)
}

// write sends one text message; the caller holds c.mu.
func (c *wsConn) write(data []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	err := c.ws.Write(ctx, websocket.MessageText, data)
	if err != nil {
		c.ws.CloseNow()
	}
	return err
}

// subscribers returns the open connections subscribed to product on channel.
func (s *Server) subscribers(channel, product string) []*wsConn {
	var out []*wsConn
	for _, c := range s.openConns() {
		if c.subscribed(channel, product) {
			out = append(out, c)
		}
	}
	return out
}

// PushCandle sends c as a candles update for product to every subscribed
// connection, remembers it for the next subscriber's snapshot, and returns
// how many connections it was addressed to.
func (s *Server) PushCandle(product string, c Candle) int {
	s.mu.Lock()
	s.liveCandles[product] = c
	s.mu.Unlock()
	conns := s.subscribers("candles", product)
	for _, conn := range conns {
		conn.send("candles", []map[string]any{{"type": "update", "candles": []wireCandle{toWireCandle(product, c)}}})
	}
	return len(conns)
}

// SetBook replaces product's order book; subscribers get it as their level2 snapshot.
func (s *Server) SetBook(product string, levels ...Level) {
	book := make(map[bookKey]float64, len(levels))
	for _, l := range levels {
		if l.Quantity > 0 {
			book[bookKey{l.Side, l.Price}] = l.Quantity
		}
	}
	s.mu.Lock()
	s.books[product] = book
	s.mu.Unlock()
}

// PushLevel2 applies levels to product's book and sends them as a level2
// update to every subscribed connection; it returns how many.
func (s *Server) PushLevel2(product string, levels ...Level) int {
	now := time.Now()
	s.mu.Lock()
	book := s.books[product]
	if book == nil {
		book = make(map[bookKey]float64)
		s.books[product] = book
	}
	wire := make([]wireLevel, 0, len(levels))
	for _, l := range levels {
		if l.Quantity > 0 {
			book[bookKey{l.Side, l.Price}] = l.Quantity
		} else {
			delete(book, bookKey{l.Side, l.Price})
		}
		wire = append(wire, wireLevel{Side: l.Side, EventTime: now.UTC().Format(time.RFC3339Nano), PriceLevel: decimal(l.Price), NewQuantity: decimal(l.Quantity)})
	}
	s.mu.Unlock()
	conns := s.subscribers("level2", product)
	for _, conn := range conns {
		conn.send("l2_data", []map[string]any{{"type": "update", "product_id": product, "updates": wire}})
	}
	return len(conns)
}

// PushTrade records trades for product and sends them as a market_trades
// update to every subscribed connection; it returns how many.
func (s *Server) PushTrade(product string, trades ...Trade) int {
	wire := make([]wireTrade, len(trades))
	s.mu.Lock()
	for i, t := range trades {
		wire[i] = toWireTrade(product, t)
	}
	kept := append(s.trades[product], trades...)
	s.trades[product] = kept[max(0, len(kept)-maxTradesKept):]
	s.mu.Unlock()
	conns := s.subscribers("market_trades", product)
	for _, conn := range conns {
		conn.send("market_trades", []map[string]any{{"type": "update", "trades": wire}})
	}
	return len(conns)
}
