package contract_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
)

// laterField is a member a newer vigil version might add.
const laterField = "added_in_a_later_version"

// withLaterFields marshals v and adds laterField (an object, so a
// decoder has to skip a whole value) to the top-level object and to the
// nested objects at paths ("state", "state/settings", "steps/0").
func withLaterFields(t *testing.T, v any, paths ...string) []byte {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	later := map[string]any{"nested": []any{1, "two", nil}}
	doc[laterField] = later
	for _, p := range paths {
		var at any = doc
		for _, name := range strings.Split(p, "/") {
			switch node := at.(type) {
			case map[string]any:
				at = node[name]
			case []any:
				at = node[0]
			}
		}
		obj, ok := at.(map[string]any)
		if !ok {
			t.Fatalf("%s of %T is not an object", p, v)
		}
		obj[laterField] = later
	}
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkPeerFamily checks that a message of type T from a newer peer
// (withLaterFields of v) decodes to what the same message without the new
// fields decodes to, with both peer decoders vigil uses: contract.DecodePeer
// and encoding/json (the services read replies, candles, indicator
// updates, alerts and queue records with it). DecodeStrict refuses it,
// naming the field, to show the message really carried one.
func checkPeerFamily[T any](t *testing.T, v T, paths ...string) {
	t.Helper()
	plain, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	want, err := contract.DecodePeer[T](plain)
	if err != nil {
		t.Fatalf("%T without new fields: %v", v, err)
	}
	newer := withLaterFields(t, v, paths...)
	got, err := contract.DecodePeer[T](newer)
	if err != nil {
		t.Errorf("DecodePeer refused %T from a newer peer: %v\n%s", v, err, newer)
	} else if !reflect.DeepEqual(got, want) {
		t.Errorf("DecodePeer %T = %+v, want %+v", v, got, want)
	}
	var std T
	if err := json.Unmarshal(newer, &std); err != nil {
		t.Errorf("encoding/json refused %T from a newer peer: %v", v, err)
	} else if !reflect.DeepEqual(std, want) {
		t.Errorf("encoding/json %T = %+v, want %+v", v, std, want)
	}
	var fe contract.FieldError
	if _, err := contract.DecodeStrict[T](newer); !errors.As(err, &fe) || !strings.HasSuffix(fe.Field, laterField) {
		t.Errorf("DecodeStrict of %T did not name %s: %v", v, laterField, err)
	}
}

// TestPeerMessagesToleratedFromANewerVersion: every message one vigil
// instance sends another (docs/design.md "Strict input", the table) is
// read by an instance of the previous version when a newer one added
// fields, at the top level and in nested objects.
func TestPeerMessagesToleratedFromANewerVersion(t *testing.T) {
	at := time.Date(2026, 12, 2, 16, 0, 0, 0, time.UTC)
	series := contract.SeriesID{User: "alice", UserID: 7, ExchangeID: 3, Symbol: "BTC-USD", Timeframe: contract.TF1m}
	state := contract.DesiredState{User: "alice", UserID: 7, ExchangeID: 3, Mode: contract.ModePositionMonitor,
		Symbols: []string{"BTC-USD"}, Revision: 4, CommandID: "01JCMD", UpdatedAt: at,
		Settings: contract.Settings{Mode: contract.ModePositionMonitor, Symbols: []string{"BTC-USD"},
			Indicators: contract.IndicatorParams{EMA: []int{20}, MACD: &contract.MACDParams{Fast: 12, Slow: 26, Signal: 9}}}}
	failure := &contract.Error{Code: contract.CodeInvalidPayload, Message: "bad", Fields: []contract.FieldError{{Field: "mode", Problem: "unknown"}}}
	t.Run("verb request", func(t *testing.T) {
		checkPeerFamily(t, contract.SvcRequest{CommandID: "01JCMD", User: "alice", State: &state, Args: json.RawMessage(`{"command_id":"01JX"}`)},
			"state", "state/settings", "state/settings/indicators", "state/settings/indicators/macd")
	})
	t.Run("verb reply", func(t *testing.T) {
		checkPeerFamily(t, contract.SvcReply{Service: "vigil-feed", Instance: "h1-feed", Error: failure}, "error", "error/fields/0")
	})
	t.Run("verb arguments", func(t *testing.T) {
		checkPeerFamily(t, contract.BackfillArgs{UserID: 7, ExchangeID: 3, Symbol: "BTC-USD", Timeframes: []contract.Timeframe{contract.TF1m}, From: at, To: at, ProgressSubject: "vigil.progress.alice.01JX"})
		checkPeerFamily(t, contract.RecomputeArgs{Series: series}, "series")
		checkPeerFamily(t, contract.ForgetArgs{UserID: 7, ExchangeID: 3, Scope: "all"})
		checkPeerFamily(t, contract.CancelArgs{CommandID: "01JX"})
		checkPeerFamily(t, contract.PlanArgs{Verb: "apply"})
	})
	t.Run("candle", func(t *testing.T) {
		checkPeerFamily(t, contract.Candle{SeriesID: series, Start: 1_700_000_000, Open: 1, High: 2, Low: 0.5, Close: 1.5, Volume: 10, Closed: true, Version: 42})
	})
	t.Run("indicator update", func(t *testing.T) {
		checkPeerFamily(t, contract.IndicatorUpdate{SeriesID: series, Start: 1_700_000_000, Version: 42, Close: 1.5,
			Values: map[string]contract.Fields{"rsi_14": {"value": 61.2}}, Warming: []string{"ema_200"}, ComputedAt: at})
	})
	t.Run("alert", func(t *testing.T) {
		checkPeerFamily(t, contract.Alert{ID: "alice.r1.1700000000", User: "alice", UserID: 7, ExchangeID: 3, RuleID: "r1",
			Kind: contract.RuleKind("threshold"), Symbol: "BTC-USD", Timeframe: contract.TF1m, BarStart: 1_700_000_000, Message: "m", Value: 1, FiredAt: at})
	})
	t.Run("desired state", func(t *testing.T) {
		checkPeerFamily(t, state, "settings", "settings/indicators")
	})
	t.Run("ack, result and progress", func(t *testing.T) {
		checkPeerFamily(t, contract.Ack{ID: "01JX", User: "alice", Command: contract.CmdPause, Accepted: true, Error: failure}, "error")
		checkPeerFamily(t, contract.Result{ID: "01JX", User: "alice", Command: contract.CmdPause, Status: contract.StatusSucceeded,
			Steps: []contract.Step{{Service: "vigil-feed", Verb: "pause", Instances: 1, Acked: 1}}, AcceptedAt: at, FinishedAt: at}, "steps/0")
		checkPeerFamily(t, contract.Progress{ID: "01JX", Done: 1, Total: 2, Unit: "pages"})
	})
}

// TestRecordedPayloadFromANewerVersion: a command payload that a newer
// vigil-control accepted and recorded with a field this version does not
// know is run (DecodeRecordedPayload ignores the field), while the same
// payload sent by an operator is refused naming the field.
func TestRecordedPayloadFromANewerVersion(t *testing.T) {
	payloads := map[contract.Command]string{
		contract.CmdPause:          `{}`,
		contract.CmdResume:         `{"symbols":["BTC-USD"]}`,
		contract.CmdReloadSettings: `{}`,
		contract.CmdSwitchMode:     `{"mode":"scalper-macdv"}`,
		contract.CmdForceBackfill:  `{"symbol":"BTC-USD","timeframes":["1h"]}`,
		contract.CmdClearCache:     `{"scope":"all"}`,
		contract.CmdCancel:         `{"id":"01JCMD0000000000000000000A"}`,
	}
	for cmd, body := range payloads {
		t.Run(string(cmd), func(t *testing.T) {
			want, err := contract.DecodePayload(cmd, []byte(body), contract.Limits{})
			if err != nil {
				t.Fatalf("the payload itself: %v", err)
			}
			newer := strings.TrimSuffix(body, "}")
			if newer != "{" {
				newer += ","
			}
			newer += `"` + laterField + `":{"x":[1]}}`
			got, err := contract.DecodeRecordedPayload(cmd, []byte(newer), contract.Limits{})
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("recorded %s = %#v, %v; want %#v", newer, got, err, want)
			}
			_, err = contract.DecodePayload(cmd, []byte(newer), contract.Limits{})
			e := contract.ErrorOf(err)
			if e.Code != contract.CodeInvalidPayload || !slices.ContainsFunc(e.Fields, func(f contract.FieldError) bool { return f.Field == laterField }) {
				t.Errorf("operator payload %s: %v", newer, err)
			}
		})
	}
	if _, err := contract.DecodeRecordedPayload(contract.CmdSwitchMode, []byte(`{"mode":"no-such-mode","`+laterField+`":1}`), contract.Limits{}); contract.CodeOf(err) != contract.CodeInvalidPayload {
		t.Errorf("a recorded payload is still validated: %v", err)
	}
}

// TestOperatorInputRefusesUnknownFields: a settings document with an
// unknown field, at the top level or inside a rule, is refused naming it.
func TestOperatorInputRefusesUnknownFields(t *testing.T) {
	for doc, field := range map[string]string{
		`{"mode":"position-monitor","symbols":["BTC-USD"],"` + laterField + `":1}`:                         laterField,
		`{"mode":"position-monitor","symbols":["BTC-USD"],"indicators":{"rsi":14,"` + laterField + `":1}}`: "indicators." + laterField,
		`{"mode":"position-monitor","symbols":["BTC-USD"],"rules":{"position-monitor":[{"id":"r1","symbol":"BTC-USD","timeframe":"1h","kind":"threshold","indicator":"rsi_14","op":"above","value":70,"` + laterField + `":1}]}}`: "rules.position-monitor[0]." + laterField,
	} {
		_, err := contract.ParseSettings([]byte(doc), contract.Limits{})
		var fe contract.FieldError
		if !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: %v, want field %s", doc, err, field)
		}
	}
}
