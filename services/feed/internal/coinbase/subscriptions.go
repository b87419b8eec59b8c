package coinbase

// This file: subscriptions: callers subscribe and unsubscribe products
// per channel (reference counted), and each session's reconciler sends
// the messages that make the upstream subscriptions match.

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/coder/websocket"
)

type subscriptionKey struct {
	channel Channel
	product string
}

// subscribeMessage is a subscribe or unsubscribe request; one channel per message.
type subscribeMessage struct {
	Type       string   `json:"type"`
	ProductIDs []string `json:"product_ids,omitempty"`
	Channel    Channel  `json:"channel"`
	JWT        string   `json:"jwt,omitempty"`
}

// dataChannels are the channels callers subscribe products on, in the order
// the reconciler visits them.
var dataChannels = []Channel{ChannelCandles, ChannelLevel2, ChannelMarketTrades}

func validateSubscription(channel Channel, product string) error {
	if !slices.Contains(dataChannels, channel) {
		return fmt.Errorf("%w: channel %q is not one of %v (heartbeats are always on)", ErrInvalidChannel, channel, dataChannels)
	}
	return ValidateProduct(product)
}

// Subscribe adds one reference to (channel, product). The first reference
// makes the Stream subscribe upstream (now if connected, else on connect);
// later references only count. It does not wait for the exchange.
func (s *Stream) Subscribe(channel Channel, product string) error {
	if err := validateSubscription(channel, product); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	products := s.refs[channel]
	if products == nil {
		products = make(map[string]int)
		s.refs[channel] = products
	}
	products[product]++
	if products[product] == 1 && s.session != nil {
		s.session.poke()
	}
	return nil
}

// Unsubscribe drops one reference to (channel, product); the last one makes
// the Stream unsubscribe upstream. It returns an error wrapping
// ErrNotSubscribed when there is no reference to drop.
func (s *Stream) Unsubscribe(channel Channel, product string) error {
	if err := validateSubscription(channel, product); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.refs[channel][product]
	switch n {
	case 0:
		return fmt.Errorf("%w: channel %s product %s", ErrNotSubscribed, channel, product)
	case 1:
		delete(s.refs[channel], product)
		delete(s.lastMessage, subscriptionKey{channel, product})
		if s.session != nil {
			s.session.poke()
		}
	default:
		s.refs[channel][product] = n - 1
	}
	return nil
}

// reconcile sends the messages that make the connection's upstream
// subscriptions match the reference counts, each time the session is poked.
// The first pass subscribes heartbeats. A write failure closes the
// connection, so Run reconnects and starts again from a clean state.
func (s *Stream) reconcile(ctx context.Context, sess *session) {
	upstream := make(map[Channel]map[string]bool)
	heartbeats := false
	send := func(typ string, channel Channel, products []string) bool {
		err := s.send(ctx, sess.conn, subscribeMessage{Type: typ, Channel: channel, ProductIDs: products})
		if err != nil && ctx.Err() == nil {
			s.log.Warn("coinbase websocket "+typ+" failed, dropping connection", "channel", channel, "error", err)
			sess.conn.CloseNow()
		}
		return err == nil
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-sess.wake:
		}
		if !heartbeats {
			if !send("subscribe", ChannelHeartbeats, nil) {
				return
			}
			heartbeats = true
		}
		if sess.resync.Swap(false) {
			for _, channel := range dataChannels {
				if len(upstream[channel]) > 0 && !send("unsubscribe", channel, slices.Sorted(maps.Keys(upstream[channel]))) {
					return
				}
			}
			clear(upstream)
		}
		desired := s.desired()
		for _, channel := range dataChannels {
			var add, remove []string
			for product := range desired[channel] {
				if !upstream[channel][product] {
					add = append(add, product)
				}
			}
			for product := range upstream[channel] {
				if !desired[channel][product] {
					remove = append(remove, product)
				}
			}
			if len(remove) > 0 {
				slices.Sort(remove)
				if !send("unsubscribe", channel, remove) {
					return
				}
				for _, product := range remove {
					delete(upstream[channel], product)
				}
			}
			if len(add) > 0 {
				slices.Sort(add)
				if !send("subscribe", channel, add) {
					return
				}
				if upstream[channel] == nil {
					upstream[channel] = make(map[string]bool)
				}
				for _, product := range add {
					upstream[channel][product] = true
				}
			}
		}
	}
}

// desired returns the products with at least one reference, per channel.
func (s *Stream) desired() map[Channel]map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[Channel]map[string]bool, len(s.refs))
	for channel, products := range s.refs {
		set := make(map[string]bool, len(products))
		for product := range products {
			set[product] = true
		}
		out[channel] = set
	}
	return out
}

// send writes one subscribe or unsubscribe message, paced by the message
// limiter and signed when credentials are configured.
func (s *Stream) send(ctx context.Context, conn *websocket.Conn, msg subscribeMessage) error {
	if err := s.limiter.Wait(ctx); err != nil {
		return err
	}
	if s.cfg.Credentials != nil {
		token, err := s.cfg.Credentials.WebSocketToken()
		if err != nil {
			return err
		}
		msg.JWT = token
	}
	data, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encoding %s message: %w", msg.Type, err)
	}
	wctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
	defer cancel()
	if err := conn.Write(wctx, websocket.MessageText, data); err != nil {
		return err
	}
	s.counters.messagesSent.Add(1)
	s.log.Debug("coinbase websocket "+msg.Type, "channel", msg.Channel, "products", msg.ProductIDs)
	return nil
}
