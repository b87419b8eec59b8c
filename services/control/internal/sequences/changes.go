package sequences

import (
	"reflect"
	"slices"

	"vigil.dev/pkg/contract"
)

// diff compares the state before a reload with the state after.
func diff(before, after contract.DesiredState) contract.SettingsChanges {
	c := contract.SettingsChanges{Symbols: contract.SymbolChanges{Added: []string{}, Removed: []string{}}, Indicators: []string{}}
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
		c.Mode = &contract.ModeChange{From: before.Mode, To: after.Mode}
	}
	c.Rules = contract.RuleCounts{Before: len(before.Settings.Rules[before.Mode]), After: len(after.Settings.Rules[after.Mode])}
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
