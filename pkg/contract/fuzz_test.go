package contract_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
)

// The fuzz targets of the contract. `go test` runs their seeds (f.Add and
// testdata/fuzz/<Target>) as regular tests; `make fuzz` explores further.

// checkRejection asserts that err is an operator error: invalid_payload
// with every field at fault named.
func checkRejection(t *testing.T, err error) {
	t.Helper()
	e := contract.ErrorOf(err)
	if e.Code != contract.CodeInvalidPayload || len(e.Fields) == 0 {
		t.Fatalf("rejection %v: code %s, fields %v; want invalid_payload naming a field", err, e.Code, e.Fields)
	}
	for _, f := range e.Fields {
		if f.Field == "" || f.Problem == "" {
			t.Fatalf("rejection %v has an unnamed field %+v", err, f)
		}
	}
}

// FuzzDecodePayload decodes any body as any command's payload: it is
// either rejected as invalid_payload naming a field, or valid, with times
// not before the epoch, and it encodes and decodes again to the same
// payload.
func FuzzDecodePayload(f *testing.F) {
	for _, seed := range []struct {
		cmd  contract.Command
		body string
	}{
		{contract.CmdPause, ``},
		{contract.CmdPause, `{"id":"op-1"}`},
		{contract.CmdResume, `{"symbols":["BTC-USD","ETH-USD"]}`},
		{contract.CmdResume, `{"sYmBols":[]}`},
		{contract.CmdReloadSettings, `{}`},
		{contract.CmdSwitchMode, `{"mode":"scalper-macdv"}`},
		{contract.CmdSwitchMode, `{"mode":"scalper-macdv","mode":"position-monitor"}`},
		{contract.CmdForceBackfill, `{"symbol":"BTC-USD","timeframes":["1h","4h"],"from":"2026-01-01T00:00:00Z","to":"2026-01-02T00:00:00Z"}`},
		{contract.CmdForceBackfill, `{"symbol":"BTC-USD","from":"0001-01-01T00:00:00Z"}`},
		{contract.CmdClearCache, `{"scope":"timeframe","symbol":"BTC-PERP-INTX","timeframe":"1m","exchange":3}`},
		{contract.CmdClearCache, `{"scope":"symbol","symbol":"BTC-*"}`},
		{"explode", `{}`},
	} {
		f.Add(string(seed.cmd), []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, cmd string, body []byte) {
		p, err := contract.DecodePayload(contract.Command(cmd), body, contract.DefaultLimits)
		if err != nil {
			if errors.Is(err, contract.ErrUnknownCommand) {
				if _, perr := contract.ParseCommand(cmd); perr == nil {
					t.Fatalf("%q is a command: %v", cmd, err)
				}
				return
			}
			checkRejection(t, err)
			return
		}
		if err := p.Validate(contract.DefaultLimits); err != nil {
			t.Fatalf("decoded payload %#v does not validate: %v", p, err)
		}
		if fb, ok := p.(contract.ForceBackfillPayload); ok {
			from, to := fb.Range()
			for _, tm := range []time.Time{from, to} {
				if !tm.IsZero() && tm.Before(time.Unix(0, 0)) {
					t.Fatalf("time %v before the epoch accepted", tm)
				}
			}
		}
		first, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("encode %#v: %v", p, err)
		}
		again, err := contract.DecodePayload(contract.Command(cmd), first, contract.DefaultLimits)
		if err != nil {
			t.Fatalf("re-decode %s: %v", first, err)
		}
		second, _ := json.Marshal(again)
		if !bytes.Equal(first, second) {
			t.Fatalf("round trip changed the payload: %s -> %s", first, second)
		}
	})
}

// FuzzParseSettings parses any settings document: rejected as
// invalid_payload naming a field, or valid, with every rule valid on its
// own (the check alerts' engine makes), and stable when encoded and parsed
// again.
func FuzzParseSettings(f *testing.F) {
	f.Add([]byte(`{"mode":"position-monitor","symbols":["BTC-USD","ETH-USD"],"indicators":{"ema":[9,21],"rsi":14},
"rules":{"position-monitor":[{"id":"rsi-hot","symbol":"BTC-USD","timeframe":"1h","kind":"threshold","indicator":"rsi_14","op":"above","value":70,"cooldown":"4h"},
{"id":"ema-x","symbol":"ETH-USD","timeframe":"4h","kind":"cross","indicator":"ema_9","op":"crosses_above","other":{"indicator":"ema_21"}}]},
"webhook":{"url":"https://example.com/hook","secret_env":"HOOK_SECRET"}}`))
	f.Add([]byte(`{"mode":"scalper-macdv","symbols":["BTC-USD"],"rules":{"scalper-macdv":[{"id":"z","symbol":"BTC-USD","timeframe":"5m","kind":"macdv_zone","indicator":"macdv","zone":"overbought","cooldown":"169h"}]}}`))
	f.Add([]byte(`{"mode":"scalper-orderbook","symbols":["BTC-PERP-INTX"],"rules":{"scalper-orderbook":[{"id":"ob","symbol":"BTC-PERP-INTX","timeframe":"1m","kind":"orderbook","indicator":"ob_imbalance","op":"below","value":-0.5,"evaluate":"live"}]}}`))
	f.Add([]byte(`{"mode":"position-monitor","symbols":["BTC-USD"],"Symbols":["ETH-USD"]}`))
	f.Add([]byte(`{"mode":"position-monitor","symbols":["BTC-USD"],"symbols":["ETH-USD"]}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		s, err := contract.ParseSettings(doc, contract.DefaultLimits)
		if err != nil {
			checkRejection(t, err)
			return
		}
		for m, rules := range s.Rules {
			for _, r := range rules {
				if err := r.Validate(); err != nil {
					t.Fatalf("rule %s of a valid document: %v", m, err)
				}
			}
		}
		enc, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		again, err := contract.ParseSettings(enc, contract.DefaultLimits)
		if err != nil {
			t.Fatalf("re-parse %s: %v", enc, err)
		}
		if enc2, _ := json.Marshal(again); !bytes.Equal(enc, enc2) {
			t.Fatalf("round trip changed the settings: %s -> %s", enc, enc2)
		}
	})
}

// FuzzNamespaces builds every subject and key from any parts that pass
// validation and asserts that the result stays in its user's namespace:
// the user token or id is exactly where the contract puts it, there are
// no extra tokens, no wildcards, and parsing gives the parts back.
func FuzzNamespaces(f *testing.F) {
	f.Add("alice", int64(1), int64(2), "BTC-USD", "1h", "ema_20", "op-1", "rule-1")
	f.Add("bob_2-x", int64(9223372036854775807), int64(1), "BTC-PERP-INTX", "1d", "macd_12_26_9", "01JD", "r")
	f.Add("a.b", int64(1), int64(1), "BTC-USD.>", "1m", "x*", "a.b", "*")
	f.Add("alice", int64(0), int64(-1), "btc-usd", "2h", "", "", "")
	f.Fuzz(func(t *testing.T, user string, userID, exchangeID int64, symbol, tf, indicator, id, ruleID string) {
		s := contract.SeriesID{User: user, UserID: userID, ExchangeID: exchangeID, Symbol: symbol, Timeframe: contract.Timeframe(tf)}
		if contract.ValidateUserToken(user) == nil {
			checkCommandSubjects(t, user, id, ruleID)
		}
		if s.Validate() != nil {
			return
		}
		checkSeriesSubjects(t, s)
		checkKeys(t, s, indicator)
		for _, scope := range []contract.ClearScope{contract.ScopeAll, contract.ScopeSymbol, contract.ScopeTimeframe} {
			checkScanPatterns(t, contract.CacheSelector{UserID: userID, ExchangeID: exchangeID, Scope: scope, Symbol: symbol, Timeframe: s.Timeframe})
		}
	})
}

// checkCommandSubjects checks the per-user subjects and the state key.
func checkCommandSubjects(t *testing.T, user, id, ruleID string) {
	for _, cmd := range contract.Commands {
		u, c, err := contract.ParseCommandSubject(contract.CommandSubject(user, cmd))
		if err != nil || u != user || c != cmd {
			t.Fatalf("command subject of %q %s parses as %q %s, %v", user, cmd, u, c, err)
		}
	}
	if got, err := contract.UserFromStateKey(contract.StateKey(user)); err != nil || got != user {
		t.Fatalf("state key of %q gives %q, %v", user, got, err)
	}
	if contract.ValidateCommandID(id) == nil {
		for _, subj := range []string{contract.ResultSubject(user, id), contract.ProgressSubject(user, id)} {
			checkTokens(t, subj, user, 4)
		}
	}
	if contract.ValidateRuleID(ruleID) == nil {
		checkTokens(t, contract.AlertSubject(user, ruleID), user, 4)
	}
}

// checkTokens asserts that subject has n tokens, no wildcard and user as
// its third token.
func checkTokens(t *testing.T, subject, user string, n int) {
	t.Helper()
	parts := strings.Split(subject, ".")
	if len(parts) != n || parts[2] != user || strings.ContainsAny(subject, "*> \t\r\n") {
		t.Fatalf("subject %q leaves user %q's namespace", subject, user)
	}
}

// checkSeriesSubjects checks the candle, indicator and book subjects.
func checkSeriesSubjects(t *testing.T, s contract.SeriesID) {
	for _, subj := range []string{contract.CandleSubject(s), contract.IndicatorSubject(s)} {
		checkTokens(t, subj, s.User, 6)
		_, got, err := contract.ParseSeriesSubject(subj)
		got.UserID = s.UserID
		if err != nil || got != s {
			t.Fatalf("subject %q parses as %+v, %v; want %+v", subj, got, err, s)
		}
	}
	checkTokens(t, contract.BookSubject(s.User, s.ExchangeID, s.Symbol), s.User, 5)
}

// checkKeys checks the Redis keys: the user id and exchange first, no glob
// characters, the right number of parts.
func checkKeys(t *testing.T, s contract.SeriesID, indicator string) {
	prefix := strconv.FormatInt(s.UserID, 10) + ":" + strconv.FormatInt(s.ExchangeID, 10) + ":"
	keys := map[string]int{contract.CandleKey(s): 5}
	if contract.ValidateIndicatorName(indicator) == nil {
		keys[contract.IndicatorKey(s, indicator)] = 6
	}
	for key, n := range keys {
		parts := strings.Split(key, ":")
		if len(parts) != n || !strings.HasPrefix(key, parts[0]+":"+prefix) || strings.ContainsAny(key, `*?[]\ {}`) {
			t.Fatalf("key %q of user %d leaves its namespace", key, s.UserID)
		}
	}
}

// checkScanPatterns checks that a clear-cache pattern starts with the
// user's and exchange's prefix and has a wildcard only at its end.
func checkScanPatterns(t *testing.T, c contract.CacheSelector) {
	patterns, err := c.ScanPatterns()
	if err != nil {
		t.Fatalf("selector %+v of valid parts: %v", c, err)
	}
	prefix := strconv.FormatInt(c.UserID, 10) + ":" + strconv.FormatInt(c.ExchangeID, 10) + ":"
	for _, p := range patterns {
		body := strings.TrimSuffix(p, "*")
		if !(strings.HasPrefix(p, "candles:"+prefix) || strings.HasPrefix(p, "indicator:"+prefix)) || strings.ContainsAny(body, `*?[]\`) {
			t.Fatalf("pattern %q of %+v can match outside the user's keys", p, c)
		}
	}
}
