package daemon_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"vigil.dev/pkg/contract"
)

// TestClearCacheKeys fills Redis with the user's keys, another exchange's,
// another user's, lookalikes and unrelated keys: each clear-cache deletes
// exactly its scope's keys, and glob symbols are rejected before anything
// is deleted.
func TestClearCacheKeys(t *testing.T) {
	e := newEnv(t, 1)
	e.startControl("c1", testSettings(), 0)
	ctx := context.Background()
	alice, bob := e.users["alice"], e.users["bob"]
	var second int64
	if err := e.pool.QueryRow(ctx, `INSERT INTO exchange_accounts (user_id, exchange, label) VALUES ($1, 'coinbase', 'second') RETURNING id`,
		alice.id).Scan(&second); err != nil {
		t.Fatal(err)
	}
	key := func(kind string, uid, ex int64, rest string) string {
		return fmt.Sprintf("%s:%d:%d:%s", kind, uid, ex, rest)
	}
	a, a2, b := func(kind, rest string) string { return key(kind, alice.id, alice.exchange, rest) },
		func(kind, rest string) string { return key(kind, alice.id, second, rest) },
		func(kind, rest string) string { return key(kind, bob.id, bob.exchange, rest) }
	all := []string{
		a("candles", "BTC-USD:1h"), a("candles", "BTC-USD:4h"), a("candles", "ETH-USD:1h"),
		a("indicator", "BTC-USD:1h:ema_20"), a("indicator", "BTC-USD:4h:rsi_14"), a("indicator", "ETH-USD:1h:ema_20"),
		a2("candles", "BTC-USD:1h"), a2("indicator", "BTC-USD:1h:ema_20"),
		b("candles", "BTC-USD:1h"), b("indicator", "BTC-USD:1h:ema_20"),
		// Lookalikes: a longer exchange id, a longer user id, a longer
		// symbol, a longer timeframe.
		key("candles", alice.id, alice.exchange*10+alice.exchange, "BTC-USD:1h"),
		key("candles", alice.id*10+alice.id, alice.exchange, "BTC-USD:1h"),
		a("indicator", "BTC-USDT:1h:ema_20"), a("candles", "BTC-USD:1hx"),
		"session:alice", "candles", fmt.Sprintf("other:%d:%d:BTC-USD:1h", alice.id, alice.exchange),
	}
	reset := func(t *testing.T) {
		t.Helper()
		if err := e.rdb.FlushDB(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		for _, k := range all {
			if err := e.rdb.Set(ctx, k, "x", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	keys := func(t *testing.T) []string {
		t.Helper()
		ks, err := e.rdb.Keys(ctx, "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(ks)
		return ks
	}
	without := func(deleted ...string) []string {
		var out []string
		for _, k := range all {
			if !slices.Contains(deleted, k) {
				out = append(out, k)
			}
		}
		slices.Sort(out)
		return out
	}
	tests := []struct {
		name, body string
		deleted    []string
	}{
		{"timeframe", `{"scope":"timeframe","symbol":"BTC-USD","timeframe":"1h"}`,
			[]string{a("candles", "BTC-USD:1h"), a("indicator", "BTC-USD:1h:ema_20")}},
		{"symbol", `{"scope":"symbol","symbol":"BTC-USD"}`,
			[]string{a("candles", "BTC-USD:1h"), a("candles", "BTC-USD:4h"), a("candles", "BTC-USD:1hx"),
				a("indicator", "BTC-USD:1h:ema_20"), a("indicator", "BTC-USD:4h:rsi_14")}},
		{"all", `{"scope":"all"}`,
			[]string{a("candles", "BTC-USD:1h"), a("candles", "BTC-USD:4h"), a("candles", "ETH-USD:1h"), a("candles", "BTC-USD:1hx"),
				a("indicator", "BTC-USD:1h:ema_20"), a("indicator", "BTC-USD:4h:rsi_14"), a("indicator", "ETH-USD:1h:ema_20"),
				a("indicator", "BTC-USDT:1h:ema_20")}},
		{"all of the second exchange", fmt.Sprintf(`{"scope":"all","exchange":%d}`, second),
			[]string{a2("candles", "BTC-USD:1h"), a2("indicator", "BTC-USD:1h:ema_20")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reset(t)
			ack := e.accept("alice", "clear-cache", tc.body)
			r := e.result("alice", ack.ID)
			if r.Status != contract.StatusSucceeded {
				t.Fatalf("%s %+v", r.Status, r.Error)
			}
			if n := decode[map[string]any](t, r.Result)["deletedCount"]; n != float64(len(tc.deleted)) {
				t.Errorf("deletedCount = %v, want %d", n, len(tc.deleted))
			}
			if got, want := keys(t), without(tc.deleted...); !slices.Equal(got, want) {
				t.Errorf("keys left:\n%v\nwant\n%v", got, want)
			}
			forget := e.callsOf(ack.ID, contract.VerbForget)
			if len(forget) != 1 {
				t.Fatalf("%d forget calls", len(forget))
			}
			args := decode[contract.ForgetArgs](t, forget[0].Args)
			if args.UserID != alice.id || (args.ExchangeID != alice.exchange && args.ExchangeID != second) {
				t.Errorf("forget args %+v", args)
			}
		})
	}
	for _, symbol := range []string{"*", "BTC-*", "[A-Z]*", "BTC-USD:*", "BTC-USD*", "?TC-USD", "btc-usd", "BTC-USD\\*"} {
		t.Run("rejects "+symbol, func(t *testing.T) {
			reset(t)
			for _, scope := range []string{"symbol", "timeframe"} {
				body := fmt.Sprintf(`{"scope":%q,"symbol":%q,"timeframe":"1h"}`, scope, symbol)
				if scope == "symbol" {
					body = fmt.Sprintf(`{"scope":%q,"symbol":%q}`, scope, symbol)
				}
				ack, _ := e.send("alice", "clear-cache", body, nil)
				if ack.Accepted || ack.Error == nil || ack.Error.Code != contract.CodeInvalidPayload ||
					len(ack.Error.Fields) == 0 || ack.Error.Fields[0].Field != "symbol" {
					t.Errorf("%s: ack %+v %+v", body, ack, ack.Error)
				}
			}
			if got := keys(t); !slices.Equal(got, without()) {
				t.Errorf("keys changed: %v", got)
			}
		})
	}
}

// TestReloadSettingsInvalid stores invalid settings: reload-settings fails
// with every field error and changes nothing; fixed settings then reload.
func TestReloadSettingsInvalid(t *testing.T) {
	e := newEnv(t, 1)
	e.startControl("c1", testSettings(), 0)
	seed := e.accept("alice", "reload-settings", "")
	e.result("alice", seed.ID)
	before := e.state("alice")
	invalid := `{"mode":"position-monitor","symbols":["BTC-USD","btc"],
	 "rules":{"position-monitor":[{"id":"r1","symbol":"DOGE-USD","timeframe":"1m","kind":"threshold","indicator":"rsi_14","op":"sideways","value":70}]}}`
	if _, err := e.pool.Exec(context.Background(), `UPDATE users SET settings = $1 WHERE identity_sub = 'alice'`, invalid); err != nil {
		t.Fatal(err)
	}
	ack := e.accept("alice", "reload-settings", "")
	r := e.result("alice", ack.ID)
	if r.Status != contract.StatusFailed || r.Error == nil || r.Error.Code != contract.CodeInvalidPayload {
		t.Fatalf("%s %+v", r.Status, r.Error)
	}
	var fields []string
	for _, f := range r.Error.Fields {
		fields = append(fields, f.Field)
	}
	for _, want := range []string{"symbols[1]", "rules.position-monitor[0](r1).symbol", "rules.position-monitor[0](r1).timeframe", "rules.position-monitor[0](r1).op"} {
		if !slices.Contains(fields, want) {
			t.Errorf("fields %v lack %s", fields, want)
		}
	}
	if after := e.state("alice"); after.KVRev != before.KVRev {
		t.Errorf("desired state changed: KV revision %d -> %d", before.KVRev, after.KVRev)
	}
	if calls := e.rec.For(ack.ID); len(calls) != 0 {
		t.Errorf("services called: %+v", calls)
	}
	fixed := `{"mode":"position-monitor","symbols":["BTC-USD","SOL-USD"],"indicators":{"rsi":21}}`
	if _, err := e.pool.Exec(context.Background(), `UPDATE users SET settings = $1 WHERE identity_sub = 'alice'`, fixed); err != nil {
		t.Fatal(err)
	}
	ok := e.accept("alice", "reload-settings", "")
	r = e.result("alice", ok.ID)
	type changes struct {
		Symbols    struct{ Added, Removed []string }
		Rules      struct{ Before, After int }
		Indicators []string
	}
	res := decode[struct {
		Reloaded bool
		Revision int64
		Changes  changes
	}](t, r.Result)
	if r.Status != contract.StatusSucceeded || !res.Reloaded || res.Revision != before.State.Revision+1 ||
		!slices.Equal(res.Changes.Symbols.Added, []string{"SOL-USD"}) || !slices.Equal(res.Changes.Symbols.Removed, []string{"ETH-USD"}) ||
		res.Changes.Rules.Before != 1 || res.Changes.Rules.After != 0 || !slices.Equal(res.Changes.Indicators, []string{"rsi"}) {
		t.Errorf("%s %+v %s", r.Status, r.Error, r.Result)
	}
	if st := e.state("alice").State; st.Settings.Indicators.RSI != 21 || !slices.Equal(st.Symbols, []string{"BTC-USD", "SOL-USD"}) {
		t.Errorf("state not reloaded: %+v", st)
	}
}
