package contract

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateUserToken(t *testing.T) {
	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"plain", "alice", true},
		{"digits underscore dash", "user_01-x", true},
		{"max length", strings.Repeat("a", 64), true},
		{"empty", "", false},
		{"too long", strings.Repeat("a", 65), false},
		{"dot", "ali.ce", false},
		{"star", "*", false},
		{"gt", ">", false},
		{"question", "a?", false},
		{"brackets", "[a]", false},
		{"backslash", `a\b`, false},
		{"space", "a b", false},
		{"tab", "a\tb", false},
		{"cyrillic a lookalike", "аlice", false},
		{"fullwidth", "ａlice", false},
		{"colon", "a:b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateUserToken(tt.token)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidateUserToken(%q) = %v, want ok=%v", tt.token, err, tt.ok)
			}
			if err != nil && (!errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), "user: ")) {
				t.Fatalf("error %q must wrap ErrInvalid and name the field", err)
			}
		})
	}
}

func TestValidateSymbol(t *testing.T) {
	tests := []struct {
		symbol string
		ok     bool
	}{
		{"BTC-USD", true},
		{"BTC-PERP-INTX", true},
		{"BIT-31JUL26-CDE", true},
		{"A-B-C-D", true},
		{"", false},
		{"BTC", false},
		{"btc-usd", false},
		{"*", false},
		{"BTC-*", false},
		{"[A-Z]*", false},
		{"BTC-USD:*", false},
		{"BTC-USD.>", false},
		{"BTC-USD ", false},
		{"BTC?USD", false},
		{`BTC\-USD`, false},
		{"BTC--USD", false},
		{"-BTC", false},
		{"A-B-C-D-E", false},
		{"ВТС-USD", false},
		{strings.Repeat("A", 21) + "-USD", false},
	}
	for _, tt := range tests {
		t.Run(tt.symbol, func(t *testing.T) {
			err := ValidateSymbol(tt.symbol)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidateSymbol(%q) = %v, want ok=%v", tt.symbol, err, tt.ok)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "symbol: ") {
				t.Fatalf("error %q must name the field", err)
			}
		})
	}
}

func TestTimeframes(t *testing.T) {
	for _, s := range []string{"1m", "5m", "15m", "1h", "4h", "1d"} {
		tf, err := ParseTimeframe(s)
		if err != nil || string(tf) != s || tf.Duration() == 0 {
			t.Fatalf("ParseTimeframe(%q) = %q, %v", s, tf, err)
		}
	}
	for _, s := range []string{"", "1M", "2m", "1w", "30m", "1h ", "*"} {
		if _, err := ParseTimeframe(s); err == nil || !errors.Is(err, ErrInvalid) {
			t.Fatalf("ParseTimeframe(%q) accepted or wrong error: %v", s, err)
		}
	}
	at := time.Date(2026, 11, 26, 13, 47, 31, 5, time.UTC)
	want := map[Timeframe]time.Time{
		TF1m:  time.Date(2026, 11, 26, 13, 47, 0, 0, time.UTC),
		TF5m:  time.Date(2026, 11, 26, 13, 45, 0, 0, time.UTC),
		TF15m: time.Date(2026, 11, 26, 13, 45, 0, 0, time.UTC),
		TF1h:  time.Date(2026, 11, 26, 13, 0, 0, 0, time.UTC),
		TF4h:  time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC),
		TF1d:  time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC),
	}
	for tf, w := range want {
		if got := tf.BarStart(at.In(time.FixedZone("X", 5*3600))); !got.Equal(w) {
			t.Errorf("%s.BarStart = %v, want %v", tf, got, w)
		}
	}
}

func TestOtherIDs(t *testing.T) {
	if ValidateRuleID("rsi-high_1") != nil || ValidateRuleID("a.b") == nil || ValidateRuleID("") == nil {
		t.Fatal("rule id validation")
	}
	if ValidateCommandID("01JD-x_y") != nil || ValidateCommandID("a b") == nil || ValidateCommandID(strings.Repeat("x", 65)) == nil {
		t.Fatal("command id validation")
	}
	if ValidateIndicatorName("macd_12_26_9") != nil || ValidateIndicatorName("EMA") == nil || ValidateIndicatorName("ema:20") == nil {
		t.Fatal("indicator name validation")
	}
	if ValidateID("user_id", 1) != nil || ValidateID("user_id", 0) == nil || ValidateID("user_id", -3) == nil {
		t.Fatal("id validation")
	}
}
