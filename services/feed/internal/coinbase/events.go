package coinbase

import "time"

// Channel is a WebSocket market-data channel name as used in subscribe messages.
type Channel string

// The channels Stream handles.
const (
	// ChannelCandles streams 5-minute candles, updated every second.
	ChannelCandles Channel = "candles"
	// ChannelHeartbeats sends one message per second; Stream always subscribes it.
	ChannelHeartbeats Channel = "heartbeats"
	// ChannelLevel2 streams the order book; its frames arrive as channel "l2_data".
	ChannelLevel2 Channel = "level2"
	// ChannelMarketTrades streams trades.
	ChannelMarketTrades Channel = "market_trades"
)

// Event is one thing the Stream reports to its Handler: *CandlesEvent,
// *Level2Event, *TradesEvent, *HeartbeatEvent, *SubscriptionsEvent,
// *ErrorEvent, *GapEvent or *ReconnectedEvent.
type Event interface {
	// isEvent seals the set of event types.
	isEvent()
}

// Handler receives the Stream's events. HandleEvent is called from the
// Stream's read goroutine, one event at a time and in order; it should not
// block for long, because frames wait while it runs.
type Handler interface {
	HandleEvent(Event)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(Event)

// HandleEvent calls f(e).
func (f HandlerFunc) HandleEvent(e Event) { f(e) }

// CandlesEvent carries candle updates (5-minute buckets) from one frame event.
type CandlesEvent struct {
	// Timestamp is the frame's server timestamp.
	Timestamp time.Time
	// Snapshot is true for the snapshot sent after subscribing, false for updates.
	Snapshot bool
	// Candles are the current state of each bucket; a bucket is updated many times.
	Candles []Candle
}

// Side is an order book side.
type Side string

// The order book sides.
const (
	// SideBid is the buy side.
	SideBid Side = "bid"
	// SideOffer is the sell side.
	SideOffer Side = "offer"
)

// Level2Update sets the size resting at one price level.
type Level2Update struct {
	// Side is SideBid or SideOffer.
	Side Side
	// Price is the price level.
	Price float64
	// Quantity is the new absolute size at Price; 0 removes the level.
	Quantity float64
	// EventTime is when the exchange changed the level.
	EventTime time.Time
}

// Level2Event is an order book snapshot or a batch of level updates for one product.
type Level2Event struct {
	// Timestamp is the frame's server timestamp.
	Timestamp time.Time
	// Product is the product id.
	Product string
	// Snapshot is true when Updates is the whole book (replace, not merge).
	Snapshot bool
	// Updates are the levels, unsorted.
	Updates []Level2Update
}

// Trade is one market trade.
type Trade struct {
	// Product is the product id.
	Product string
	// TradeID is the exchange's trade id.
	TradeID string
	// Price is the trade price.
	Price float64
	// Size is the traded base amount.
	Size float64
	// Side is the maker side as the exchange reports it ("BUY" or "SELL").
	Side string
	// Time is when the trade happened.
	Time time.Time
}

// TradesEvent carries market trades from one frame event.
type TradesEvent struct {
	// Timestamp is the frame's server timestamp.
	Timestamp time.Time
	// Snapshot is true for the recent trades sent after subscribing.
	Snapshot bool
	// Trades are the trades in the order the exchange sent them.
	Trades []Trade
}

// HeartbeatEvent is one heartbeats message.
type HeartbeatEvent struct {
	// Timestamp is the frame's server timestamp.
	Timestamp time.Time
	// Counter is the exchange's heartbeat_counter.
	Counter int64
}

// SubscriptionsEvent is the exchange's acknowledgement of a subscribe or
// unsubscribe: the connection's complete, cumulative subscriptions.
type SubscriptionsEvent struct {
	// Timestamp is the frame's server timestamp.
	Timestamp time.Time
	// Subscriptions maps channel names to product ids ("heartbeats" maps to ["heartbeats"]).
	Subscriptions map[string][]string
}

// ErrorEvent is an error frame from the exchange, such as
// "authentication failure" for a rejected subscription.
type ErrorEvent struct {
	// Message is the exchange's error message.
	Message string
}

// GapEvent reports a jump in the connection's sequence numbers: frames were
// lost. Stream resubscribes every channel to get fresh snapshots; the caller
// should backfill [From, To] from REST.
type GapEvent struct {
	// Expected is the sequence number that should have come next.
	Expected int64
	// Got is the sequence number that came.
	Got int64
	// From is when the last frame before the gap was received.
	From time.Time
	// To is when the frame after the gap was received.
	To time.Time
}

// ReconnectedEvent reports that the connection was lost and is back, with
// every subscription re-sent. Data between From and To was not received; the
// caller should backfill that interval from REST.
type ReconnectedEvent struct {
	// From is when the last frame on the lost connection was received (or
	// when it connected, if it received none).
	From time.Time
	// To is when the new connection was established.
	To time.Time
	// Attempts is how many dials it took.
	Attempts int
	// Cause is why the old connection ended (it wraps ErrSilence after a watchdog timeout).
	Cause error
}

func (*CandlesEvent) isEvent()       {}
func (*Level2Event) isEvent()        {}
func (*TradesEvent) isEvent()        {}
func (*HeartbeatEvent) isEvent()     {}
func (*SubscriptionsEvent) isEvent() {}
func (*ErrorEvent) isEvent()         {}
func (*GapEvent) isEvent()           {}
func (*ReconnectedEvent) isEvent()   {}
