package sequences

import (
	"reflect"
	"slices"

	"vigil.dev/pkg/contract"
)

// Changes summarises what a reload-settings changed.
type Changes struct {
	Symbols SymbolChanges `json:"symbols"`
	// Mode is set when the mode changed.
	Mode *ModeChange `json:"mode,omitempty"`
	// Rules counts the rules of the (new) mode before and after.
	Rules RuleCounts `json:"rules"`
	// Indicators names the indicator parameters that changed (ema, rsi,
	// macd, ...), after defaults.
	Indicators []string `json:"indicators"`
	// Webhook is true when the webhook settings changed.
	Webhook bool `json:"webhook,omitempty"`
}

// SymbolChanges are the symbols added and removed.
type SymbolChanges struct {
	Added   []string `json:"added"`
	Removed []string `json:"removed"`
}

// ModeChange is a change of mode.
type ModeChange struct {
	From contract.Mode `json:"from"`
	To   contract.Mode `json:"to"`
}

// RuleCounts are rule counts of the active mode.
type RuleCounts struct {
	Before int `json:"before"`
	After  int `json:"after"`
}

// diff compares the state before a reload with the state after.
func diff(before, after contract.DesiredState) Changes {
	c := Changes{Symbols: SymbolChanges{Added: []string{}, Removed: []string{}}, Indicators: []string{}}
	for _, s := range after.Symbols {
		if !slices.Contains(before.Symbols, s) {
			c.Symbols.Added = append(c.Symbols.Added, s)
		}
	}
	for _, s := range before.Symbols {
		if !slices.Contains(after.Symbols, s) {
			c.Symbols.Removed = append(c.Symbols.Removed, s)
		}
	}
	if before.Mode != after.Mode {
		c.Mode = &ModeChange{From: before.Mode, To: after.Mode}
	}
	c.Rules = RuleCounts{Before: len(before.Settings.Rules[before.Mode]), After: len(after.Settings.Rules[after.Mode])}
	b, a := before.Settings.Indicators.WithDefaults(), after.Settings.Indicators.WithDefaults()
	for _, f := range []struct {
		name string
		b, a any
	}{
		{"ema", b.EMA, a.EMA}, {"sma", b.SMA, a.SMA}, {"rsi", b.RSI, a.RSI}, {"macd", b.MACD, a.MACD},
		{"macdv", b.MACDV, a.MACDV}, {"atr", b.ATR, a.ATR}, {"bollinger", b.Bollinger, a.Bollinger},
		{"depth_bps", b.DepthBps, a.DepthBps},
	} {
		if !reflect.DeepEqual(f.b, f.a) {
			c.Indicators = append(c.Indicators, f.name)
		}
	}
	c.Webhook = !reflect.DeepEqual(before.Settings.Webhook, after.Settings.Webhook)
	return c
}
