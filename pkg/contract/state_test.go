package contract_test

import (
	"errors"
	"fmt"
	"testing"

	"vigil.dev/pkg/contract"
)

// TestDesiredStateValidate reports every problem of a desired state, named
// as in its JSON, and accepts a good one.
func TestDesiredStateValidate(t *testing.T) {
	good := contract.DesiredState{User: "alice", UserID: 1, ExchangeID: 2, Mode: contract.ModeScalperMACDV, Symbols: []string{"BTC-USD"}}
	if err := good.Validate(); err != nil {
		t.Fatalf("good state: %v", err)
	}
	bad := contract.DesiredState{User: "a.b", Mode: "turbo", Symbols: []string{"BTC-USD", "btc*"}}
	bad.Settings.Mode = "slow"
	err := bad.Validate()
	if !errors.Is(err, contract.ErrInvalid) {
		t.Fatalf("err = %v, want invalid", err)
	}
	var fes contract.FieldErrors
	if !errors.As(err, &fes) {
		t.Fatalf("err %v is not FieldErrors", err)
	}
	var fields []string
	for _, f := range fes {
		fields = append(fields, f.Field)
	}
	want := []string{"user", "user_id", "exchange_id", "mode", "settings.mode", "symbols[1]"}
	if fmt.Sprint(fields) != fmt.Sprint(want) {
		t.Errorf("fields = %v, want %v", fields, want)
	}
}

// TestRuleValidate checks a rule on its own (what alerts' engine calls),
// including the 7-day cooldown cap.
func TestRuleValidate(t *testing.T) {
	v := 70.0
	good := contract.Rule{ID: "r1", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleThreshold,
		SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}, Op: contract.OpAbove, Value: &v, Cooldown: "168h"}
	if err := good.Validate(); err != nil {
		t.Fatalf("good rule: %v", err)
	}
	long := good
	long.Cooldown = "168h1s"
	var fes contract.FieldErrors
	if err := long.Validate(); !errors.As(err, &fes) || len(fes) != 1 || fes[0].Field != "cooldown" {
		t.Errorf("cooldown over 7 days: %v", err)
	}
}
