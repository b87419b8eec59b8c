package contract_test

import (
	"encoding/json"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
)

// The feed's typed replies keep the wire shapes: owner at the top level,
// {"owner":false} from an instance that does not own the user, and each
// decodes back through DecodeStrict (operator tools) and DecodePeer
// (control) to the same value.
func TestFeedRepliesRoundTrip(t *testing.T) {
	if got, _ := json.Marshal(contract.OwnerReply{}); string(got) != `{"owner":false}` {
		t.Errorf("not owner: %s", got)
	}
	owner := contract.OwnerReply{Owner: true}
	cases := []roundTrip{
		{"pause", contract.FeedPauseResult{OwnerReply: owner, Paused: true, Symbols: []string{"BTC-USD"}},
			`{"owner":true,"paused":true,"symbols":["BTC-USD"]}`, decodeAs[contract.FeedPauseResult]},
		{"resume", contract.FeedResumeResult{OwnerReply: owner, Symbols: []string{"BTC-USD"}, GapFilled: contract.GapFill{"BTC-USD": {contract.TF1m: 3}}},
			`{"owner":true,"symbols":["BTC-USD"],"gap_filled":{"BTC-USD":{"1m":3}}}`, decodeAs[contract.FeedResumeResult]},
		{"apply", contract.FeedApplyResult{OwnerReply: owner, Added: []string{"ETH-USD"}, Removed: []string{}, Symbols: []string{"BTC-USD", "ETH-USD"}, Book: true},
			`{"owner":true,"added":["ETH-USD"],"removed":[],"symbols":["BTC-USD","ETH-USD"],"book":true,"paused":false}`, decodeAs[contract.FeedApplyResult]},
		{"backfill", contract.FeedBackfillResult{OwnerReply: owner, Symbol: "BTC-USD", Candles: map[contract.Timeframe]int{contract.TF1h: 300}, Pages: 1},
			`{"owner":true,"symbol":"BTC-USD","candles":{"1h":300},"pages":1}`, decodeAs[contract.FeedBackfillResult]},
		{"backfill plan", contract.FeedBackfillPlan{OwnerReply: owner, Pages: 2, Requests: 2, RatePerSecond: 10, EstimatedSeconds: 0.2,
			Ranges: []contract.FeedPlanRange{{Timeframe: contract.TF1h, From: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC), Pages: 2}}},
			`{"owner":true,"pages":2,"requests":2,"rate_per_second":10,"estimated_seconds":0.2,"ranges":[{"tf":"1h","from":"2026-12-01T00:00:00Z","to":"2026-12-02T00:00:00Z","pages":2}]}`,
			decodeAs[contract.FeedBackfillPlan]},
		{"cancel", contract.FeedCancelResult{Stopped: []contract.JobProgress{{Pages: 1, Total: 2, Candles: map[contract.Timeframe]int{contract.TF1h: 300}}}},
			`{"owner":false,"stopped":[{"pages":1,"total":2,"candles":{"1h":300}}]}`, decodeAs[contract.FeedCancelResult]},
	}
	checkRoundTrips(t, cases)
}

// roundTrip is a value, its wire form and how to decode that again.
type roundTrip struct {
	name string
	v    any
	want string
	back func([]byte) (any, error)
}

// checkRoundTrips checks that each value encodes to its wire form, which
// decodes (strictly and as a peer) and encodes to the same form again.
func checkRoundTrips(t *testing.T, cases []roundTrip) {
	t.Helper()
	for _, c := range cases {
		got, err := json.Marshal(c.v)
		if err != nil || string(got) != c.want {
			t.Errorf("%s: %s (%v), want %s", c.name, got, err, c.want)
			continue
		}
		back, err := c.back(got)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if again, _ := json.Marshal(back); string(again) != c.want {
			t.Errorf("%s: decoded and encoded again %s, want %s", c.name, again, c.want)
		}
	}
}

func decodeAs[T any](b []byte) (any, error) {
	v, err := contract.DecodeStrict[T](b)
	if err != nil {
		return nil, err
	}
	if _, err := contract.DecodePeer[T](b); err != nil {
		return nil, err
	}
	return v, nil
}
