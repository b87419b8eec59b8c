package contract

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestDecodePayload(t *testing.T) {
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	tests := []struct {
		cmd       Command
		body      string
		wantField string // "" = valid
	}{
		{CmdPause, ``, ""},
		{CmdPause, `{}`, ""},
		{CmdPause, `{"id":"abc-1"}`, ""},
		{CmdPause, `{"id":"a b"}`, "id"},
		{CmdPause, `{"force":true}`, "force"},
		{CmdPause, `{} {}`, "payload"},
		{CmdPause, `[`, "payload"},
		{CmdPause, `[]`, "payload"},
		{CmdResume, `{"symbols":["BTC-USD","ETH-USD"]}`, ""},
		{CmdResume, `{"symbols":["BTC-USD","BTC-USD"]}`, "symbols[1]"},
		{CmdResume, `{"symbols":["BTC-*"]}`, "symbols[0]"},
		{CmdResume, `{"symbols":"BTC-USD"}`, "symbols"},
		{CmdReloadSettings, `{}`, ""},
		{CmdSwitchMode, `{"mode":"scalper-macdv"}`, ""},
		{CmdSwitchMode, `{}`, "mode"},
		{CmdSwitchMode, `{"mode":"yolo"}`, "mode"},
		{CmdSwitchMode, `{"mode":7}`, "mode"},
		{CmdForceBackfill, `{"symbol":"BTC-USD"}`, ""},
		{CmdForceBackfill, `{"symbol":"BTC-USD","timeframes":["1m","1h"],"from":"2026-11-01T00:00:00Z","to":"2026-11-02T00:00:00Z"}`, ""},
		{CmdForceBackfill, `{}`, "symbol"},
		{CmdForceBackfill, `{"symbol":"BTC-USD:*"}`, "symbol"},
		{CmdForceBackfill, `{"symbol":"BTC-USD","timeframes":["2h"]}`, "timeframes[0]"},
		{CmdForceBackfill, `{"symbol":"BTC-USD","timeframes":["1h","1h"]}`, "timeframes[1]"},
		{CmdForceBackfill, `{"symbol":"BTC-USD","from":"2026-11-02T00:00:00Z","to":"2026-11-01T00:00:00Z"}`, "from"},
		{CmdForceBackfill, `{"symbol":"BTC-USD","from":"2020-01-01T00:00:00Z","to":"2026-11-01T00:00:00Z"}`, "from"},
		{CmdForceBackfill, fmt.Sprintf(`{"symbol":"BTC-USD","to":%q}`, future), "to"},
		{CmdForceBackfill, `{"symbol":"BTC-USD","from":"yesterday"}`, "from"},
		{CmdClearCache, `{"scope":"all"}`, ""},
		{CmdClearCache, `{"scope":"symbol","symbol":"BTC-USD"}`, ""},
		{CmdClearCache, `{"scope":"timeframe","symbol":"BTC-USD","timeframe":"4h","exchange":2}`, ""},
		{CmdClearCache, `{}`, "scope"},
		{CmdClearCache, `{"scope":"symbol"}`, "symbol"},
		{CmdClearCache, `{"scope":"symbol","symbol":"*"}`, "symbol"},
		{CmdClearCache, `{"scope":"symbol","symbol":"BTC-*"}`, "symbol"},
		{CmdClearCache, `{"scope":"symbol","symbol":"[A-Z]*"}`, "symbol"},
		{CmdClearCache, `{"scope":"symbol","symbol":"BTC-USD:*"}`, "symbol"},
		{CmdClearCache, `{"scope":"all","symbol":"BTC-USD"}`, "scope"},
		{CmdClearCache, `{"scope":"timeframe","symbol":"BTC-USD"}`, "timeframe"},
		{CmdClearCache, `{"scope":"symbol","symbol":"BTC-USD","exchange":-1}`, "exchange"},
		{CmdClearCache, `{"scope":"symbol","symbol":"BTC-USD","exchange":"x"}`, "exchange"},
		{CmdReloadSettings, `{"dry_run":true}`, ""},
		{CmdReloadSettings, `{"plan":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}`, ""},
		{CmdSwitchMode, `{"mode":"scalper-macdv","dry_run":true}`, ""},
		{CmdForceBackfill, `{"symbol":"BTC-USD","plan":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}`, ""},
		{CmdClearCache, `{"scope":"all","dry_run":true}`, ""},
		{CmdClearCache, `{"scope":"all","dry_run":true,"plan":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}`, "dry_run"},
		{CmdClearCache, `{"scope":"all","plan":"0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"}`, "plan"},
		{CmdClearCache, `{"scope":"all","plan":"abc"}`, "plan"},
		{CmdClearCache, `{"scope":"all","dry_run":"yes"}`, "dry_run"},
		{CmdClearCache, `{"scope":"all","Dry_Run":true}`, "Dry_Run"},
		{CmdPause, `{"dry_run":true}`, "dry_run"},
		{CmdResume, `{"plan":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}`, "plan"},
	}
	for _, tt := range tests {
		t.Run(string(tt.cmd)+" "+tt.body, func(t *testing.T) {
			p, err := DecodePayload(tt.cmd, []byte(tt.body), DefaultLimits)
			if tt.wantField == "" {
				if err != nil || p == nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("want ErrInvalid naming %q, got %v", tt.wantField, err)
			}
			ce := ErrorFrom(err, CodeInternal)
			if ce.Code != CodeInvalidPayload || len(ce.Fields) == 0 {
				t.Fatalf("ErrorFrom = %+v", ce)
			}
			found := false
			for _, f := range ce.Fields {
				found = found || f.Field == tt.wantField
			}
			if !found {
				t.Fatalf("fields %+v do not name %q", ce.Fields, tt.wantField)
			}
		})
	}
}

func TestDecodePayloadLimits(t *testing.T) {
	big := `{"symbols":["` + strings.Repeat("A", MaxPayloadBytes) + `-USD"]}`
	if _, err := DecodePayload(CmdResume, []byte(big), DefaultLimits); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized payload: %v", err)
	}
	syms := make([]string, 3)
	for i := range syms {
		syms[i] = fmt.Sprintf(`"S%d-USD"`, i)
	}
	body := `{"symbols":[` + strings.Join(syms, ",") + `]}`
	if _, err := DecodePayload(CmdResume, []byte(body), Limits{MaxSymbols: 2}); err == nil || !strings.Contains(err.Error(), "limit is 2") {
		t.Fatalf("symbol limit: %v", err)
	}
	if _, err := DecodePayload("explode", nil, DefaultLimits); !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("unknown command: %v", err)
	}
}

// TestCancelPayload: cancel's id names the command to cancel (required, a
// valid command id), never the cancel's own id; unknown fields are errors.
func TestCancelPayload(t *testing.T) {
	p, err := DecodePayload(CmdCancel, []byte(`{"id":"01JD-target"}`), DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if c := p.(CancelPayload); c.ID != "01JD-target" || c.CommandID() != "" {
		t.Fatalf("payload %+v, own id %q", c, c.CommandID())
	}
	for body, field := range map[string]string{
		``:                          "id: is required",
		`{}`:                        "id: is required",
		`{"id":"a.b"}`:              "id: ",
		`{"id":"x","symbol":"BTC"}`: "symbol",
		`{"id":7}`:                  "id",
	} {
		if _, err := DecodePayload(CmdCancel, []byte(body), DefaultLimits); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: error %v, want one naming %q", body, err, field)
		}
	}
}

func TestCommandsAndPriority(t *testing.T) {
	for _, c := range Commands {
		got, err := ParseCommand(string(c))
		if err != nil || got != c {
			t.Fatalf("ParseCommand(%q) = %q %v", c, got, err)
		}
	}
	if _, err := ParseCommand("Pause"); !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("case-sensitive: %v", err)
	}
	if !(CmdCancel.Priority() == CmdPause.Priority() &&
		CmdPause.Priority() == CmdResume.Priority() &&
		CmdResume.Priority() > CmdSwitchMode.Priority() &&
		CmdSwitchMode.Priority() == CmdReloadSettings.Priority() &&
		CmdReloadSettings.Priority() > CmdClearCache.Priority() &&
		CmdClearCache.Priority() > CmdForceBackfill.Priority()) {
		t.Fatal("priorities out of order")
	}
	p := ForceBackfillPayload{Symbol: "BTC-USD"}
	if len(p.BackfillTimeframes()) != 6 {
		t.Fatal("backfill defaults to all six timeframes")
	}
}

func TestErrorFrom(t *testing.T) {
	if ErrorFrom(nil, CodeInternal) != nil {
		t.Fatal("nil error")
	}
	if e := ErrorFrom(errors.New("boom"), CodeUnavailable); e.Code != CodeUnavailable {
		t.Fatalf("fallback: %+v", e)
	}
	busy := &Error{Code: CodeBusy, Message: "queue full"}
	if e := ErrorFrom(fmt.Errorf("wrap: %w", busy), CodeInternal); e != busy {
		t.Fatalf("passthrough: %+v", e)
	}
	if e := ErrorFrom(FieldError{Field: "symbol", Problem: "is required"}, CodeInternal); e.Code != CodeInvalidPayload || e.Fields[0].Field != "symbol" {
		t.Fatalf("field: %+v", e)
	}
}
