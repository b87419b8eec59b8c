package coinbase

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// The channel names frames carry; level2 data arrives as "l2_data".
const (
	frameChannelCandles       = "candles"
	frameChannelHeartbeats    = "heartbeats"
	frameChannelLevel2        = "l2_data"
	frameChannelMarketTrades  = "market_trades"
	frameChannelSubscriptions = "subscriptions"
)

// envelope is the outer shape of every WebSocket frame. Error frames carry
// only type and message.
type envelope struct {
	Type        string          `json:"type"`
	Message     string          `json:"message"`
	Channel     string          `json:"channel"`
	Timestamp   string          `json:"timestamp"`
	SequenceNum *int64          `json:"sequence_num"`
	Events      json.RawMessage `json:"events"`
}

// frame is a decoded WebSocket frame. When decodeFrame fails after reading
// the sequence number, hasSeq is still set so sequence tracking stays right.
type frame struct {
	seq    int64
	hasSeq bool
	events []Event
}

// decodeFrame decodes and validates one frame. Errors wrap ErrMalformedFrame
// or ErrUnknownChannel; an exchange error frame decodes to an *ErrorEvent.
func decodeFrame(data []byte) (frame, error) {
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return frame{}, fmt.Errorf("%w: %v", ErrMalformedFrame, err)
	}
	if env.Type == "error" {
		return frame{events: []Event{&ErrorEvent{Message: env.Message}}}, nil
	}
	if env.Channel == "" {
		return frame{}, fmt.Errorf("%w: channel is missing", ErrMalformedFrame)
	}
	if env.SequenceNum == nil {
		return frame{}, fmt.Errorf("%w: %s frame: sequence_num is missing", ErrMalformedFrame, env.Channel)
	}
	f := frame{seq: *env.SequenceNum, hasSeq: true}
	ts, err := time.Parse(time.RFC3339Nano, env.Timestamp)
	if err != nil {
		return f, fmt.Errorf("%w: %s frame: timestamp %q is not RFC 3339", ErrMalformedFrame, env.Channel, env.Timestamp)
	}
	if len(env.Events) == 0 || string(env.Events) == "null" {
		return f, fmt.Errorf("%w: %s frame: events are missing", ErrMalformedFrame, env.Channel)
	}
	switch env.Channel {
	case frameChannelCandles:
		f.events, err = decodeCandles(env.Events, ts)
	case frameChannelLevel2:
		f.events, err = decodeLevel2(env.Events, ts)
	case frameChannelMarketTrades:
		f.events, err = decodeTrades(env.Events, ts)
	case frameChannelHeartbeats:
		f.events, err = decodeHeartbeats(env.Events, ts)
	case frameChannelSubscriptions:
		f.events, err = decodeSubscriptions(env.Events, ts)
	default:
		return f, fmt.Errorf("%w: %q", ErrUnknownChannel, env.Channel)
	}
	if err != nil {
		return frame{seq: f.seq, hasSeq: true}, fmt.Errorf("%w: %s frame: %v", ErrMalformedFrame, env.Channel, err)
	}
	return f, nil
}

// snapshotFlag maps an event type to Snapshot; anything but snapshot or update is an error.
func snapshotFlag(eventType string) (bool, error) {
	switch eventType {
	case "snapshot":
		return true, nil
	case "update":
		return false, nil
	default:
		return false, fmt.Errorf("event type %q is neither snapshot nor update", eventType)
	}
}

func decodeCandles(raw json.RawMessage, ts time.Time) ([]Event, error) {
	var items []struct {
		Type    string      `json:"type"`
		Candles []rawCandle `json:"candles"`
	}
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, err
	}
	events := make([]Event, 0, len(items))
	for _, item := range items {
		snapshot, err := snapshotFlag(item.Type)
		if err != nil {
			return nil, err
		}
		ev := &CandlesEvent{Timestamp: ts, Snapshot: snapshot, Candles: make([]Candle, 0, len(item.Candles))}
		for _, rc := range item.Candles {
			if err := ValidateProduct(rc.ProductID); err != nil {
				return nil, fmt.Errorf("candle product_id: %v", err)
			}
			c, err := rc.parse(rc.ProductID)
			if err != nil {
				return nil, err
			}
			ev.Candles = append(ev.Candles, c)
		}
		events = append(events, ev)
	}
	return events, nil
}

func decodeLevel2(raw json.RawMessage, ts time.Time) ([]Event, error) {
	var items []struct {
		Type      string `json:"type"`
		ProductID string `json:"product_id"`
		Updates   []struct {
			Side        string `json:"side"`
			EventTime   string `json:"event_time"`
			PriceLevel  string `json:"price_level"`
			NewQuantity string `json:"new_quantity"`
		} `json:"updates"`
	}
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, err
	}
	events := make([]Event, 0, len(items))
	for _, item := range items {
		snapshot, err := snapshotFlag(item.Type)
		if err != nil {
			return nil, err
		}
		if err := ValidateProduct(item.ProductID); err != nil {
			return nil, fmt.Errorf("level2 product_id: %v", err)
		}
		ev := &Level2Event{Timestamp: ts, Product: item.ProductID, Snapshot: snapshot, Updates: make([]Level2Update, 0, len(item.Updates))}
		for _, u := range item.Updates {
			side := Side(u.Side)
			if side != SideBid && side != SideOffer {
				return nil, fmt.Errorf("level2 side %q is neither bid nor offer", u.Side)
			}
			price, err := parseDecimal(u.PriceLevel)
			if err != nil {
				return nil, fmt.Errorf("level2 price_level: %v", err)
			}
			quantity, err := parseDecimal(u.NewQuantity)
			if err != nil {
				return nil, fmt.Errorf("level2 new_quantity: %v", err)
			}
			eventTime, err := time.Parse(time.RFC3339Nano, u.EventTime)
			if err != nil {
				return nil, fmt.Errorf("level2 event_time %q is not RFC 3339", u.EventTime)
			}
			ev.Updates = append(ev.Updates, Level2Update{Side: side, Price: price, Quantity: quantity, EventTime: eventTime})
		}
		events = append(events, ev)
	}
	return events, nil
}

func decodeTrades(raw json.RawMessage, ts time.Time) ([]Event, error) {
	var items []struct {
		Type   string `json:"type"`
		Trades []struct {
			TradeID   string `json:"trade_id"`
			ProductID string `json:"product_id"`
			Price     string `json:"price"`
			Size      string `json:"size"`
			Side      string `json:"side"`
			Time      string `json:"time"`
		} `json:"trades"`
	}
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, err
	}
	events := make([]Event, 0, len(items))
	for _, item := range items {
		snapshot, err := snapshotFlag(item.Type)
		if err != nil {
			return nil, err
		}
		ev := &TradesEvent{Timestamp: ts, Snapshot: snapshot, Trades: make([]Trade, 0, len(item.Trades))}
		for _, t := range item.Trades {
			if err := ValidateProduct(t.ProductID); err != nil {
				return nil, fmt.Errorf("trade product_id: %v", err)
			}
			price, err := parseDecimal(t.Price)
			if err != nil {
				return nil, fmt.Errorf("trade price: %v", err)
			}
			size, err := parseDecimal(t.Size)
			if err != nil {
				return nil, fmt.Errorf("trade size: %v", err)
			}
			tradeTime, err := time.Parse(time.RFC3339Nano, t.Time)
			if err != nil {
				return nil, fmt.Errorf("trade time %q is not RFC 3339", t.Time)
			}
			ev.Trades = append(ev.Trades, Trade{Product: t.ProductID, TradeID: t.TradeID, Price: price, Size: size, Side: t.Side, Time: tradeTime})
		}
		events = append(events, ev)
	}
	return events, nil
}

func decodeHeartbeats(raw json.RawMessage, ts time.Time) ([]Event, error) {
	var items []struct {
		HeartbeatCounter json.RawMessage `json:"heartbeat_counter"`
	}
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, err
	}
	events := make([]Event, 0, len(items))
	for _, item := range items {
		counter, err := parseHeartbeatCounter(item.HeartbeatCounter)
		if err != nil {
			return nil, err
		}
		events = append(events, &HeartbeatEvent{Timestamp: ts, Counter: counter})
	}
	return events, nil
}

// parseHeartbeatCounter reads heartbeat_counter: an integer in production
// frames, a string holding one in Coinbase's docs and Python SDK; both are
// taken, anything else is an error naming the field.
func parseHeartbeatCounter(raw json.RawMessage) (int64, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, errors.New("heartbeat_counter is missing")
	}
	text := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &text); err != nil {
			return 0, fmt.Errorf("heartbeat_counter %s: %v", raw, err)
		}
	}
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("heartbeat_counter %s is neither an integer nor a string holding one", raw)
	}
	return n, nil
}

func decodeSubscriptions(raw json.RawMessage, ts time.Time) ([]Event, error) {
	var items []struct {
		Subscriptions map[string][]string `json:"subscriptions"`
	}
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, err
	}
	events := make([]Event, 0, len(items))
	for _, item := range items {
		if item.Subscriptions == nil {
			return nil, errors.New("subscriptions are missing")
		}
		events = append(events, &SubscriptionsEvent{Timestamp: ts, Subscriptions: item.Subscriptions})
	}
	return events, nil
}
