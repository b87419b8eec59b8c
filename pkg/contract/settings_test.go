package contract

import (
	"errors"
	"strings"
	"testing"
)

const goodSettings = `{
  "mode": "position-monitor",
  "symbols": ["BTC-USD", "ETH-USD"],
  "indicators": {"ema": [9, 21], "rsi": 14},
  "rules": {
    "position-monitor": [
      {"id": "rsi-hot", "symbol": "BTC-USD", "timeframe": "1h", "kind": "threshold", "indicator": "rsi_14", "op": "above", "value": 70, "cooldown": "4h"},
      {"id": "ema-cross", "symbol": "BTC-USD", "timeframe": "4h", "kind": "cross", "indicator": "ema_9", "op": "crosses_above", "other": {"indicator": "ema_21"}},
      {"id": "macd-cross", "symbol": "ETH-USD", "timeframe": "1h", "kind": "cross", "indicator": "macd_12_26_9", "field": "macd", "op": "crosses_below", "other": {"indicator": "macd_12_26_9", "field": "signal"}, "evaluate": "live"},
      {"id": "price-floor", "symbol": "ETH-USD", "timeframe": "1d", "kind": "threshold", "indicator": "price", "op": "below", "value": 1000}
    ],
    "scalper-macdv": [
      {"id": "macdv-ob", "symbol": "BTC-USD", "timeframe": "1m", "kind": "macdv_zone", "indicator": "macdv_12_26_9", "field": "macd", "zone": "overbought"}
    ],
    "scalper-orderbook": [
      {"id": "imb", "symbol": "BTC-USD", "timeframe": "1m", "kind": "orderbook", "indicator": "ob_imbalance", "op": "above", "value": 0.6}
    ]
  },
  "webhook": {"url": "https://example.invalid/hook", "secret_env": "VIGIL_WEBHOOK_SECRET"}
}`

func TestParseSettingsGood(t *testing.T) {
	s, err := ParseSettings([]byte(goodSettings), DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if s.Mode != ModePositionMonitor || len(s.RulesFor(ModePositionMonitor)) != 4 {
		t.Fatalf("%+v", s)
	}
	names := map[string]bool{}
	for _, spec := range s.Indicators.IndicatorSpecs(ModePositionMonitor) {
		names[spec.Name] = true
	}
	for _, n := range []string{"ema_9", "ema_21", "rsi_14", "macd_12_26_9", "atr_14", "bb_20_2"} {
		if !names[n] {
			t.Errorf("position-monitor lacks %s: %v", n, names)
		}
	}
}

func TestParseSettingsBad(t *testing.T) {
	tests := []struct {
		name, from, to, field string
	}{
		{"mode", `"mode": "position-monitor"`, `"mode": "hodl"`, "mode"},
		{"symbol glob", `"symbols": ["BTC-USD", "ETH-USD"]`, `"symbols": ["BTC-USD", "ETH-*"]`, "symbols[1]"},
		{"no symbols", `"symbols": ["BTC-USD", "ETH-USD"]`, `"symbols": []`, "symbols"},
		{"period", `"rsi": 14`, `"rsi": 0, "atr": -1`, "indicators.atr"},
		{"unknown field", `"rsi": 14`, `"rsi": 14, "vwap": 3`, "vwap"},
		{"rule indicator", `"indicator": "rsi_14"`, `"indicator": "rsi_7"`, "rules.position-monitor[0](rsi-hot).indicator"},
		{"rule timeframe", `"timeframe": "1h", "kind": "threshold", "indicator": "rsi_14"`, `"timeframe": "1m", "kind": "threshold", "indicator": "rsi_14"`, "rules.position-monitor[0](rsi-hot).timeframe"},
		{"rule symbol", `"id": "rsi-hot", "symbol": "BTC-USD"`, `"id": "rsi-hot", "symbol": "SOL-USD"`, "rules.position-monitor[0](rsi-hot).symbol"},
		{"rule op", `"op": "above", "value": 70`, `"op": "crosses_above", "value": 70`, "rules.position-monitor[0](rsi-hot).op"},
		{"rule value", `"op": "above", "value": 70`, `"op": "above"`, "rules.position-monitor[0](rsi-hot).value"},
		{"rule field", `"field": "macd", "op"`, `"field": "hist2", "op"`, "rules.position-monitor[2](macd-cross).field"},
		{"rule duplicate id", `"id": "ema-cross"`, `"id": "rsi-hot"`, "rules.position-monitor[1](rsi-hot).id"},
		{"zone", `"zone": "overbought"`, `"zone": "moon"`, "rules.scalper-macdv[0](macdv-ob).zone"},
		{"cooldown", `"cooldown": "4h"`, `"cooldown": "soon"`, "rules.position-monitor[0](rsi-hot).cooldown"},
		{"orderbook indicator", `"indicator": "ob_imbalance"`, `"indicator": "price"`, "rules.scalper-orderbook[0](imb).indicator"},
		{"webhook", `"https://example.invalid/hook"`, `"ftp://x"`, "webhook.url"},
		{"mode key", `"scalper-macdv": [`, `"scalper": [`, "rules"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := strings.Replace(goodSettings, tt.from, tt.to, 1)
			if doc == goodSettings {
				t.Fatalf("replacement %q not found", tt.from)
			}
			_, err := ParseSettings([]byte(doc), DefaultLimits)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("want ErrInvalid, got %v", err)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("error %q does not name %q", err, tt.field)
			}
		})
	}
	if _, err := ParseSettings([]byte(goodSettings), Limits{MaxRules: 3}); err == nil || !strings.Contains(err.Error(), "limit is 3") {
		t.Fatalf("rule limit: %v", err)
	}
}

func TestZoneOf(t *testing.T) {
	tests := []struct {
		v    float64
		want MACDVZone
	}{{151, ZoneOverbought}, {150, ZoneBullish}, {50.01, ZoneBullish}, {50, ZoneRanging}, {0, ZoneRanging}, {-50, ZoneRanging}, {-50.01, ZoneBearish}, {-150, ZoneBearish}, {-150.5, ZoneOversold}}
	for _, tt := range tests {
		if got := ZoneOf(tt.v); got != tt.want {
			t.Errorf("ZoneOf(%v) = %s, want %s", tt.v, got, tt.want)
		}
	}
}

func TestModes(t *testing.T) {
	for _, m := range Modes {
		if m.Validate() != nil || len(m.Timeframes()) == 0 || len(DefaultIndicatorParams.IndicatorSpecs(m)) == 0 {
			t.Errorf("mode %s incomplete", m)
		}
		for _, spec := range DefaultIndicatorParams.IndicatorSpecs(m) {
			if err := ValidateIndicatorName(spec.Name); err != nil {
				t.Errorf("mode %s: %v", m, err)
			}
		}
	}
	if !ModeScalperOrderbook.UsesOrderBook() || ModeScalperMACDV.UsesOrderBook() {
		t.Error("only scalper-orderbook uses level2")
	}
	p := IndicatorParams{Bollinger: &BollingerParam{Period: 20, StdDev: 2.5}}
	for _, spec := range p.IndicatorSpecs(ModePositionMonitor) {
		if spec.Kind == KindBollinger && spec.Name != "bb_20_2p5" {
			t.Errorf("bollinger name %q", spec.Name)
		}
	}
}
