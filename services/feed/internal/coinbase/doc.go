// Package coinbase speaks the Coinbase Advanced Trade protocol for the feed
// service: a WebSocket market-data client ([Stream]) with reference-counted
// product subscriptions, sequence-gap detection, a silence watchdog and
// automatic reconnection; a REST candles client ([RESTClient]) that pages
// ranges, rate-limits per credential and retries throttled requests; and CDP
// API-key JWT signing ([Credentials]); and [Source], the feed's Coinbase
// source built on them (source.go).
//
// Nothing in this package knows about NATS, Redis or users: it turns the
// exchange's wire protocol into typed Go values and reports what went wrong.
package coinbase
