package contract_test

import (
	"encoding/json"
	"errors"
	"fmt"

	"vigil.dev/pkg/contract"
)

// A package keeps its own error names and texts but gives them a kind;
// ErrorOf maps any error to the ACK's error object in one place.
func ExampleErrorOf() {
	errQueueFull := contract.NewKind(contract.ErrBusy, "ledger: queue is full")
	err := fmt.Errorf("alice: %w", errQueueFull)
	e := contract.ErrorOf(err)
	fmt.Println(e.Code, e.Code.ServiceCode(), e.Message)
	fmt.Println(errors.Is(e, contract.ErrBusy))
	// Output:
	// busy 429 alice: ledger: queue is full
	// true
}

// Operator payloads are decoded strictly: a key in another case is an
// unknown field, named in the error.
func ExampleDecodePayload() {
	_, err := contract.DecodePayload(contract.CmdResume, []byte(`{"sYmBols":[]}`), contract.DefaultLimits)
	e := contract.ErrorOf(err)
	fmt.Println(e.Code, e.Fields[0].Field)

	p, _ := contract.DecodePayload(contract.CmdResume, []byte(`{"symbols":["BTC-USD"]}`), contract.DefaultLimits)
	fmt.Println(p.(contract.ResumePayload).Symbols)
	// Output:
	// invalid_payload sYmBols
	// [BTC-USD]
}

// A rule is checked on its own (what alerts' engine needs); every problem
// names its field.
func ExampleRule_Validate() {
	r := contract.Rule{ID: "rsi-hot", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleThreshold,
		SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}, Op: contract.OpAbove, Cooldown: "8d"}
	fmt.Println(r.Validate())
	// Output:
	// value: is required; cooldown: "8d" is not a non-negative duration like "15m"
}

// A desired state read from VIGIL_STATE is checked before a service acts
// on it.
func ExampleDesiredState_Validate() {
	st := contract.DesiredState{User: "alice", UserID: 1, ExchangeID: 0, Symbols: []string{"BTC-USD", "btc"}}
	fmt.Println(st.Validate())
	// Output:
	// exchange_id: must be a positive id, got 0; symbols[1]: "btc" is not a product id like BTC-USD (uppercase A-Z 0-9 parts joined by '-')
}

// Subjects and keys are built only from validated parts.
func ExampleCandleKey() {
	s := contract.SeriesID{User: "alice", UserID: 7, ExchangeID: 3, Symbol: "BTC-USD", Timeframe: contract.TF1h}
	if err := s.Validate(); err != nil {
		panic(err)
	}
	fmt.Println(contract.CandleKey(s))
	fmt.Println(contract.CandleSubject(s))
	// Output:
	// candles:7:3:BTC-USD:1h
	// vigil.candle.alice.3.BTC-USD.1h
}

// Every instance answers a per-user verb; only the user's owner with a
// result, the others with OwnerReply{} alone. control decodes each
// instance's reply into the verb's result type.
func ExampleOwnerReply() {
	notOwner, _ := json.Marshal(contract.OwnerReply{})
	paused, _ := json.Marshal(contract.FeedPauseResult{OwnerReply: contract.OwnerReply{Owner: true}, Paused: true, Symbols: []string{"BTC-USD"}})
	fmt.Println(string(notOwner))
	fmt.Println(string(paused))
	res, err := contract.DecodePeer[contract.FeedPauseResult](paused)
	fmt.Println(res.Owner, res.Symbols, err)
	// Output:
	// {"owner":false}
	// {"owner":true,"paused":true,"symbols":["BTC-USD"]}
	// true [BTC-USD] <nil>
}
