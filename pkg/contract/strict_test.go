package contract_test

import (
	"errors"
	"slices"
	"testing"

	"vigil.dev/pkg/contract"
)

// TestStrictPayloads feeds DecodePayload what a lenient decoder accepted:
// each is rejected with invalid_payload naming the field.
func TestStrictPayloads(t *testing.T) {
	tests := []struct {
		name  string
		cmd   contract.Command
		body  string
		field string
	}{
		{"key case", contract.CmdResume, `{"sYmBols":[]}`, "sYmBols"},
		{"key case of a known field", contract.CmdSwitchMode, `{"Mode":"scalper-macdv"}`, "Mode"},
		{"duplicate key", contract.CmdSwitchMode, `{"mode":"scalper-macdv","mode":"position-monitor"}`, "mode"},
		{"duplicate nested", contract.CmdForceBackfill, `{"symbol":"BTC-USD","symbol":"ETH-USD"}`, "symbol"},
		{"unknown field", contract.CmdPause, `{"bogus":1}`, "bogus"},
		{"wrong type", contract.CmdResume, `{"symbols":"BTC-USD"}`, "symbols"},
		{"wrong element type", contract.CmdForceBackfill, `{"symbol":"BTC-USD","timeframes":[1]}`, "timeframes[0]"},
		{"trailing data", contract.CmdPause, `{} {}`, "payload"},
		{"not JSON", contract.CmdPause, `{"id":`, "payload"},
		{"not an object", contract.CmdPause, `[]`, "payload"},
		{"invalid UTF-8", contract.CmdResume, "{\"symbols\":[\"\xff\"]}", "payload"},
		{"zero from", contract.CmdForceBackfill, `{"symbol":"BTC-USD","from":"0001-01-01T00:00:00Z"}`, "from"},
		{"pre-epoch from", contract.CmdForceBackfill, `{"symbol":"BTC-USD","from":"1969-12-31T23:59:59Z"}`, "from"},
		{"zero to", contract.CmdForceBackfill, `{"symbol":"BTC-USD","to":"0001-01-01T00:00:00Z"}`, "to"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := contract.DecodePayload(tc.cmd, []byte(tc.body), contract.Limits{})
			if err == nil {
				t.Fatalf("accepted as %#v", p)
			}
			e := contract.ErrorOf(err)
			if e.Code != contract.CodeInvalidPayload {
				t.Errorf("code %s: %v", e.Code, err)
			}
			var fields []string
			for _, f := range e.Fields {
				fields = append(fields, f.Field)
			}
			if !slices.Contains(fields, tc.field) {
				t.Errorf("fields %v lack %q: %v", fields, tc.field, err)
			}
		})
	}
	if _, err := contract.DecodePayload(contract.CmdForceBackfill, []byte(`{"symbol":"BTC-USD","from":"1970-01-01T00:00:00Z","to":"1970-01-02T00:00:00Z","timeframes":["1d"]}`), contract.Limits{}); err != nil {
		t.Errorf("the epoch itself is a time: %v", err)
	}
}

// TestStrictSettings rejects a settings document with a duplicate key or a
// key in the wrong case, naming the field.
func TestStrictSettings(t *testing.T) {
	for _, doc := range []string{
		`{"mode":"position-monitor","Symbols":["BTC-USD"]}`,
		`{"mode":"position-monitor","symbols":["BTC-USD"],"symbols":["ETH-USD"]}`,
	} {
		_, err := contract.ParseSettings([]byte(doc), contract.Limits{})
		var fe contract.FieldError
		if !errors.As(err, &fe) || (fe.Field != "Symbols" && fe.Field != "symbols") {
			t.Errorf("%s: %v", doc, err)
		}
	}
}

// TestDecodePeer ignores unknown members (a newer peer's) but still
// rejects a duplicate or a name in the wrong case.
func TestDecodePeer(t *testing.T) {
	req, err := contract.DecodePeer[contract.SvcRequest]([]byte(`{"user":"alice","added_later":true}`))
	if err != nil || req.User != "alice" {
		t.Fatalf("DecodePeer = %+v, %v", req, err)
	}
	if _, err := contract.DecodePeer[contract.SvcRequest]([]byte(`{"user":"alice","user":"bob"}`)); err == nil {
		t.Error("duplicate accepted")
	}
	if req, _ := contract.DecodePeer[contract.SvcRequest]([]byte(`{"User":"bob"}`)); req.User != "" {
		t.Errorf("User matched user: %+v", req)
	}
}

// TestCheckWatched allows a backfill only of a symbol the user watches.
func TestCheckWatched(t *testing.T) {
	p := contract.ForceBackfillPayload{Symbol: "DOGE-USD"}
	var fe contract.FieldError
	if err := p.CheckWatched([]string{"BTC-USD"}); !errors.As(err, &fe) || fe.Field != "symbol" || contract.CodeOf(err) != contract.CodeInvalidPayload {
		t.Errorf("unwatched: %v", err)
	}
	if err := p.CheckWatched([]string{"BTC-USD", "DOGE-USD"}); err != nil {
		t.Errorf("watched: %v", err)
	}
	st := contract.DesiredState{}
	st.Settings.Symbols = []string{"DOGE-USD"}
	if err := p.CheckWatched(st.WatchedSymbols()); err != nil {
		t.Errorf("the settings' symbols when the state has none: %v", err)
	}
}
