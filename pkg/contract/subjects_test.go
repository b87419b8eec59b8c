package contract

import (
	"errors"
	"testing"
)

func TestSubjects(t *testing.T) {
	s := SeriesID{User: "alice", UserID: 7, ExchangeID: 3, Symbol: "BTC-USD", Timeframe: TF5m}
	tests := []struct{ got, want string }{
		{CommandSubject("alice", CmdClearCache), "vigil.cmd.alice.clear-cache"},
		{ResultSubject("alice", "01J"), "vigil.result.alice.01J"},
		{ProgressSubject("alice", "01J"), "vigil.progress.alice.01J"},
		{SvcSubject(SvcFeed, VerbBackfill), "vigil.svc.feed.backfill"},
		{CandleSubject(s), "vigil.candle.alice.3.BTC-USD.5m"},
		{IndicatorSubject(s), "vigil.indicator.alice.3.BTC-USD.5m"},
		{BookSubject("alice", 3, "BTC-USD"), "vigil.book.alice.3.BTC-USD"},
		{AlertSubject("alice", "r1"), "vigil.alert.alice.r1"},
		{StateKey("alice"), "user.alice"},
		{SvcIndicators.MicroName(), "vigil-indicators"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestParseCommandSubject(t *testing.T) {
	user, cmd, err := ParseCommandSubject("vigil.cmd.alice.force-backfill")
	if err != nil || user != "alice" || cmd != CmdForceBackfill {
		t.Fatalf("got %q %q %v", user, cmd, err)
	}
	for _, bad := range []string{"vigil.cmd.alice", "vigil.cmd.*.pause", "vigil.result.alice.pause", "vigil.cmd.alice.pause.x", "vigil.cmd.al ice.pause"} {
		if _, _, err := ParseCommandSubject(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: want ErrInvalid, got %v", bad, err)
		}
	}
	if _, _, err := ParseCommandSubject("vigil.cmd.alice.explode"); !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("want ErrUnknownCommand, got %v", err)
	}
}

func TestParseSeriesSubject(t *testing.T) {
	kind, s, err := ParseSeriesSubject("vigil.candle.bob.12.ETH-USD.1h")
	if err != nil || kind != "candle" || s != (SeriesID{User: "bob", ExchangeID: 12, Symbol: "ETH-USD", Timeframe: TF1h}) {
		t.Fatalf("got %q %+v %v", kind, s, err)
	}
	if kind, _, err := ParseSeriesSubject("vigil.indicator.bob.1.ETH-USD.4h"); err != nil || kind != "indicator" {
		t.Fatalf("indicator: %q %v", kind, err)
	}
	for _, bad := range []string{"vigil.candle.bob.0.ETH-USD.1h", "vigil.candle.bob.x.ETH-USD.1h", "vigil.candle.bob.1.eth-usd.1h",
		"vigil.candle.bob.1.ETH-USD.2h", "vigil.alert.bob.1.ETH-USD.1h", "vigil.candle.bob.1.ETH-USD"} {
		if _, _, err := ParseSeriesSubject(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: want ErrInvalid, got %v", bad, err)
		}
	}
}

func TestUserFromStateKey(t *testing.T) {
	if u, err := UserFromStateKey("user.alice"); err != nil || u != "alice" {
		t.Fatalf("%q %v", u, err)
	}
	for _, bad := range []string{"alice", "user.", "user.a.b", "users.alice"} {
		if _, err := UserFromStateKey(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestKeys(t *testing.T) {
	s := SeriesID{User: "alice", UserID: 7, ExchangeID: 3, Symbol: "BTC-USD", Timeframe: TF1h}
	if got := CandleKey(s); got != "candles:7:3:BTC-USD:1h" {
		t.Errorf("CandleKey = %q", got)
	}
	if got := IndicatorKey(s, "rsi_14"); got != "indicator:7:3:BTC-USD:1h:rsi_14" {
		t.Errorf("IndicatorKey = %q", got)
	}
}

func TestCacheSelector(t *testing.T) {
	tests := []struct {
		name string
		sel  CacheSelector
		want []string
	}{
		{"all", CacheSelector{UserID: 7, ExchangeID: 3, Scope: ScopeAll}, []string{"candles:7:3:*", "indicator:7:3:*"}},
		{"symbol", CacheSelector{UserID: 7, ExchangeID: 3, Scope: ScopeSymbol, Symbol: "BTC-USD"}, []string{"candles:7:3:BTC-USD:*", "indicator:7:3:BTC-USD:*"}},
		{"timeframe", CacheSelector{UserID: 7, ExchangeID: 3, Scope: ScopeTimeframe, Symbol: "BTC-USD", Timeframe: TF1h}, []string{"candles:7:3:BTC-USD:1h", "indicator:7:3:BTC-USD:1h:*"}},
		{"glob symbol", CacheSelector{UserID: 7, ExchangeID: 3, Scope: ScopeSymbol, Symbol: "BTC-*"}, nil},
		{"class symbol", CacheSelector{UserID: 7, ExchangeID: 3, Scope: ScopeSymbol, Symbol: "[A-Z]*"}, nil},
		{"colon symbol", CacheSelector{UserID: 7, ExchangeID: 3, Scope: ScopeSymbol, Symbol: "BTC-USD:*"}, nil},
		{"star symbol", CacheSelector{UserID: 7, ExchangeID: 3, Scope: ScopeSymbol, Symbol: "*"}, nil},
		{"no user", CacheSelector{ExchangeID: 3, Scope: ScopeAll}, nil},
		{"bad scope", CacheSelector{UserID: 7, ExchangeID: 3, Scope: "everything"}, nil},
		{"timeframe missing", CacheSelector{UserID: 7, ExchangeID: 3, Scope: ScopeTimeframe, Symbol: "BTC-USD"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.sel.ScanPatterns()
			if tt.want == nil {
				if err == nil || !errors.Is(err, ErrInvalid) {
					t.Fatalf("want ErrInvalid, got %v %v", got, err)
				}
				return
			}
			if err != nil || len(got) != len(tt.want) || got[0] != tt.want[0] || got[1] != tt.want[1] {
				t.Fatalf("got %v %v, want %v", got, err, tt.want)
			}
		})
	}
	sel := CacheSelector{UserID: 7, ExchangeID: 3, Scope: ScopeSymbol, Symbol: "BTC-USD"}
	in := SeriesID{UserID: 7, ExchangeID: 3, Symbol: "BTC-USD", Timeframe: TF1d}
	if !sel.Matches(in) {
		t.Error("selector must match its own series")
	}
	for _, out := range []SeriesID{{UserID: 8, ExchangeID: 3, Symbol: "BTC-USD"}, {UserID: 7, ExchangeID: 4, Symbol: "BTC-USD"}, {UserID: 7, ExchangeID: 3, Symbol: "BTC-USDC"}} {
		if sel.Matches(out) {
			t.Errorf("selector matched %+v", out)
		}
	}
}
