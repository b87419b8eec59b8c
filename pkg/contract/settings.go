package contract

import (
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Mode is a user's operating mode.
type Mode string

// The three modes of ARCHITECTURE.md §5.
const (
	ModePositionMonitor  Mode = "position-monitor"
	ModeScalperMACDV     Mode = "scalper-macdv"
	ModeScalperOrderbook Mode = "scalper-orderbook"
)

// Modes lists every mode.
var Modes = []Mode{ModePositionMonitor, ModeScalperMACDV, ModeScalperOrderbook}

// Validate checks that m is one of the modes.
func (m Mode) Validate() error {
	if slices.Contains(Modes, m) {
		return nil
	}
	return FieldError{Field: "mode", Problem: fmt.Sprintf("%q is not one of position-monitor, scalper-macdv, scalper-orderbook", m)}
}

// Timeframes are the timeframes the mode's indicators and rules run on.
func (m Mode) Timeframes() []Timeframe {
	switch m {
	case ModePositionMonitor:
		return []Timeframe{TF1h, TF4h, TF1d}
	case ModeScalperMACDV:
		return []Timeframe{TF1m, TF5m}
	case ModeScalperOrderbook:
		return []Timeframe{TF1m}
	}
	return nil
}

// UsesOrderBook reports whether the feed subscribes level2 for this mode.
func (m Mode) UsesOrderBook() bool { return m == ModeScalperOrderbook }

// Settings is a user's settings document (users.settings). Secrets never
// live here: a webhook names the environment variable or file holding its
// secret.
type Settings struct {
	Mode       Mode             `json:"mode"`
	Symbols    []string         `json:"symbols"`
	Indicators IndicatorParams  `json:"indicators"`
	Rules      map[Mode][]Rule  `json:"rules,omitempty"`
	Webhook    *WebhookSettings `json:"webhook,omitempty"`
}

// IndicatorParams are the user's indicator parameters; zero values take the
// defaults of DefaultIndicatorParams.
type IndicatorParams struct {
	EMA       []int           `json:"ema,omitempty"`
	SMA       []int           `json:"sma,omitempty"`
	RSI       int             `json:"rsi,omitempty"`
	MACD      *MACDParams     `json:"macd,omitempty"`
	MACDV     *MACDParams     `json:"macdv,omitempty"`
	ATR       int             `json:"atr,omitempty"`
	Bollinger *BollingerParam `json:"bollinger,omitempty"`
	// DepthBps is the band around the mid price for order-book depth and
	// imbalance, in basis points.
	DepthBps float64 `json:"depth_bps,omitempty"`
}

// MACDParams are the periods of MACD or MACD-V.
type MACDParams struct {
	Fast   int `json:"fast"`
	Slow   int `json:"slow"`
	Signal int `json:"signal"`
}

// BollingerParam are the Bollinger Bands period and width.
type BollingerParam struct {
	Period int     `json:"period"`
	StdDev float64 `json:"stddev"`
}

// WebhookSettings configure a user's optional webhook notifier.
type WebhookSettings struct {
	URL string `json:"url"`
	// SecretEnv names the environment variable holding the HMAC secret.
	SecretEnv string `json:"secret_env,omitempty"`
}

// MaxPeriod bounds every indicator period.
const MaxPeriod = 1000

// DefaultIndicatorParams are the parameters used where settings say nothing.
var DefaultIndicatorParams = IndicatorParams{
	EMA:       []int{20, 50},
	RSI:       14,
	MACD:      &MACDParams{Fast: 12, Slow: 26, Signal: 9},
	MACDV:     &MACDParams{Fast: 12, Slow: 26, Signal: 9},
	ATR:       14,
	Bollinger: &BollingerParam{Period: 20, StdDev: 2},
	DepthBps:  10,
}

// WithDefaults fills zero parameters from DefaultIndicatorParams.
func (p IndicatorParams) WithDefaults() IndicatorParams {
	d := DefaultIndicatorParams
	if p.EMA == nil {
		p.EMA = d.EMA
	}
	if p.RSI == 0 {
		p.RSI = d.RSI
	}
	if p.MACD == nil {
		p.MACD = d.MACD
	}
	if p.MACDV == nil {
		p.MACDV = d.MACDV
	}
	if p.ATR == 0 {
		p.ATR = d.ATR
	}
	if p.Bollinger == nil {
		p.Bollinger = d.Bollinger
	}
	if p.DepthBps == 0 {
		p.DepthBps = d.DepthBps
	}
	return p
}

// IndicatorKind is the kind of an indicator series.
type IndicatorKind string

// The indicator kinds.
const (
	KindSMA          IndicatorKind = "sma"
	KindEMA          IndicatorKind = "ema"
	KindRSI          IndicatorKind = "rsi"
	KindMACD         IndicatorKind = "macd"
	KindMACDV        IndicatorKind = "macdv"
	KindATR          IndicatorKind = "atr"
	KindBollinger    IndicatorKind = "bb"
	KindOBImbalance  IndicatorKind = "ob_imbalance"
	KindOBSpread     IndicatorKind = "ob_spread"
	KindOBDepth      IndicatorKind = "ob_depth"
	priceIndicator                 = "price"
	defaultFieldName               = "value"
)

// IndicatorSpec is one configured indicator series of a mode.
type IndicatorSpec struct {
	Name   string        `json:"name"`
	Kind   IndicatorKind `json:"kind"`
	Period int           `json:"period,omitempty"`
	Fast   int           `json:"fast,omitempty"`
	Slow   int           `json:"slow,omitempty"`
	Signal int           `json:"signal,omitempty"`
	StdDev float64       `json:"stddev,omitempty"`
	// DepthBps is the band of the order-book indicators.
	DepthBps float64 `json:"depth_bps,omitempty"`
}

// Fields are the output field names of the spec's indicator.
func (s IndicatorSpec) Fields() []string {
	switch s.Kind {
	case KindMACD, KindMACDV:
		return []string{"macd", "signal", "hist"}
	case KindBollinger:
		return []string{"upper", "middle", "lower"}
	case KindOBDepth:
		return []string{"bid", "ask"}
	}
	return []string{defaultFieldName}
}

// formatNum renders a parameter for a name: 2 → "2", 2.5 → "2p5".
func formatNum(v float64) string {
	return strings.ReplaceAll(strconv.FormatFloat(v, 'f', -1, 64), ".", "p")
}

// IndicatorSpecs are the indicator series that mode m computes with these
// parameters (defaults filled in), named as in Redis keys.
func (p IndicatorParams) IndicatorSpecs(m Mode) []IndicatorSpec {
	p = p.WithDefaults()
	var out []IndicatorSpec
	switch m {
	case ModePositionMonitor:
		for _, n := range p.EMA {
			out = append(out, IndicatorSpec{Name: fmt.Sprintf("ema_%d", n), Kind: KindEMA, Period: n})
		}
		for _, n := range p.SMA {
			out = append(out, IndicatorSpec{Name: fmt.Sprintf("sma_%d", n), Kind: KindSMA, Period: n})
		}
		out = append(out,
			IndicatorSpec{Name: fmt.Sprintf("rsi_%d", p.RSI), Kind: KindRSI, Period: p.RSI},
			IndicatorSpec{Name: fmt.Sprintf("macd_%d_%d_%d", p.MACD.Fast, p.MACD.Slow, p.MACD.Signal), Kind: KindMACD, Fast: p.MACD.Fast, Slow: p.MACD.Slow, Signal: p.MACD.Signal},
			IndicatorSpec{Name: fmt.Sprintf("atr_%d", p.ATR), Kind: KindATR, Period: p.ATR},
			IndicatorSpec{Name: fmt.Sprintf("bb_%d_%s", p.Bollinger.Period, formatNum(p.Bollinger.StdDev)), Kind: KindBollinger, Period: p.Bollinger.Period, StdDev: p.Bollinger.StdDev},
		)
	case ModeScalperMACDV:
		out = append(out, IndicatorSpec{Name: fmt.Sprintf("macdv_%d_%d_%d", p.MACDV.Fast, p.MACDV.Slow, p.MACDV.Signal), Kind: KindMACDV, Fast: p.MACDV.Fast, Slow: p.MACDV.Slow, Signal: p.MACDV.Signal})
	case ModeScalperOrderbook:
		out = append(out,
			IndicatorSpec{Name: string(KindOBImbalance), Kind: KindOBImbalance, DepthBps: p.DepthBps},
			IndicatorSpec{Name: string(KindOBSpread), Kind: KindOBSpread},
			IndicatorSpec{Name: string(KindOBDepth), Kind: KindOBDepth, DepthBps: p.DepthBps},
		)
	}
	return out
}

// Validate checks the parameters a user gave (before defaults).
func (p IndicatorParams) Validate() error {
	var f fieldErrs
	period := func(field string, n int) {
		if n < 1 || n > MaxPeriod {
			f.add(field, "period %d must be between 1 and %d", n, MaxPeriod)
		}
	}
	for _, list := range []struct {
		field string
		ns    []int
	}{{"ema", p.EMA}, {"sma", p.SMA}} {
		if len(list.ns) > 10 {
			f.add(list.field, "has %d periods, the limit is 10", len(list.ns))
		}
		for i, n := range list.ns {
			period(fmt.Sprintf("%s[%d]", list.field, i), n)
			if slices.Index(list.ns, n) != i {
				f.add(fmt.Sprintf("%s[%d]", list.field, i), "period %d is listed twice", n)
			}
		}
	}
	if p.RSI != 0 {
		period("rsi", p.RSI)
	}
	if p.ATR != 0 {
		period("atr", p.ATR)
	}
	for name, m := range map[string]*MACDParams{"macd": p.MACD, "macdv": p.MACDV} {
		if m == nil {
			continue
		}
		period(name+".fast", m.Fast)
		period(name+".slow", m.Slow)
		period(name+".signal", m.Signal)
		if m.Fast >= m.Slow {
			f.add(name+".fast", "%d must be below slow %d", m.Fast, m.Slow)
		}
	}
	if b := p.Bollinger; b != nil {
		period("bollinger.period", b.Period)
		if !(b.StdDev > 0 && b.StdDev <= 10) {
			f.add("bollinger.stddev", "%v must be above 0 and at most 10", b.StdDev)
		}
	}
	if p.DepthBps != 0 && !(p.DepthBps > 0 && p.DepthBps <= 10_000) {
		f.add("depth_bps", "%v must be above 0 and at most 10000", p.DepthBps)
	}
	return f.err()
}

// RuleKind is the kind of an alert rule.
type RuleKind string

// The rule kinds.
const (
	RuleThreshold RuleKind = "threshold"
	RuleCross     RuleKind = "cross"
	RuleMACDVZone RuleKind = "macdv_zone"
	RuleOrderBook RuleKind = "orderbook"
)

// RuleOp is the comparison of a rule.
type RuleOp string

// The rule operators.
const (
	OpAbove        RuleOp = "above"
	OpBelow        RuleOp = "below"
	OpCrossesAbove RuleOp = "crosses_above"
	OpCrossesBelow RuleOp = "crosses_below"
)

// MACDVZone is a MACD-V zone.
type MACDVZone string

// The MACD-V zones (Spiroglou): above 150, 50..150, -50..50, -150..-50,
// below -150.
const (
	ZoneOverbought MACDVZone = "overbought"
	ZoneBullish    MACDVZone = "bullish"
	ZoneRanging    MACDVZone = "ranging"
	ZoneBearish    MACDVZone = "bearish"
	ZoneOversold   MACDVZone = "oversold"
)

// ZoneOf is the MACD-V zone of value v. Boundaries belong to the inner
// zone: exactly 150 is bullish, exactly 50 is ranging.
func ZoneOf(v float64) MACDVZone {
	switch {
	case v > 150:
		return ZoneOverbought
	case v > 50:
		return ZoneBullish
	case v >= -50:
		return ZoneRanging
	case v >= -150:
		return ZoneBearish
	}
	return ZoneOversold
}

// SeriesRef names a value series: "price" or an indicator name with a field.
type SeriesRef struct {
	Indicator string `json:"indicator"`
	Field     string `json:"field,omitempty"`
}

// FieldOrDefault is the field, "value" when empty.
func (r SeriesRef) FieldOrDefault() string {
	if r.Field == "" {
		return defaultFieldName
	}
	return r.Field
}

// IsPrice reports whether the reference is the candle's close.
func (r SeriesRef) IsPrice() bool { return r.Indicator == priceIndicator }

// EvaluateOn says when a rule is evaluated.
type EvaluateOn string

// When rules are evaluated.
const (
	OnClose EvaluateOn = "close"
	OnLive  EvaluateOn = "live"
)

// Rule is one alert rule of a user's mode.
type Rule struct {
	ID        string    `json:"id"`
	Symbol    string    `json:"symbol"`
	Timeframe Timeframe `json:"timeframe"`
	Kind      RuleKind  `json:"kind"`
	SeriesRef
	Op RuleOp `json:"op,omitempty"`
	// Value is the threshold, or the level crossed when Other is nil.
	Value *float64 `json:"value,omitempty"`
	// Other is the series crossed (cross rules).
	Other *SeriesRef `json:"other,omitempty"`
	// Zone is the MACD-V zone whose entry fires (macdv_zone rules); empty
	// fires on entering any zone.
	Zone MACDVZone `json:"zone,omitempty"`
	// Cooldown is a Go duration ("15m"): after firing, the rule stays
	// quiet for bars starting within it.
	Cooldown string     `json:"cooldown,omitempty"`
	Evaluate EvaluateOn `json:"evaluate,omitempty"`
}

// CooldownDuration is the parsed cooldown (zero when unset or invalid; a
// validated rule has a valid one).
func (r Rule) CooldownDuration() time.Duration {
	d, _ := time.ParseDuration(r.Cooldown)
	return d
}

// EvaluateOrDefault is when the rule is evaluated, close by default.
func (r Rule) EvaluateOrDefault() EvaluateOn {
	if r.Evaluate == "" {
		return OnClose
	}
	return r.Evaluate
}

// Validate checks what a rule means on its own, the engine's
// preconditions: id, symbol, timeframe, indicator given, kind with its op,
// value, other series or zone, evaluate, and a cooldown of at most 7 days.
// How the rule fits a user's mode, symbols and indicators is checked by
// Settings.Validate. Problems are FieldErrors named relative to the rule
// ("op", "other.indicator").
func (r Rule) Validate() error {
	var f fieldErrs
	f.check("id", ValidateRuleID(r.ID))
	f.check("symbol", ValidateSymbol(r.Symbol))
	f.check("timeframe", r.Timeframe.Validate())
	if strings.TrimSpace(r.Indicator) == "" {
		f.add("indicator", "is required")
	}
	r.validateKind(&f)
	switch r.Evaluate {
	case "", OnClose, OnLive:
	default:
		f.add("evaluate", "%q must be close or live", r.Evaluate)
	}
	if r.Cooldown != "" {
		d, err := time.ParseDuration(r.Cooldown)
		switch {
		case err != nil || d < 0:
			f.add("cooldown", "%q is not a non-negative duration like \"15m\"", r.Cooldown)
		case d > MaxCooldown:
			f.add("cooldown", "%s is longer than 7 days", d)
		}
	}
	return f.err()
}

// MaxCooldown bounds a rule's cooldown.
const MaxCooldown = 7 * 24 * time.Hour

// validateKind checks the kind and the fields that go with it.
func (r Rule) validateKind(f *fieldErrs) {
	finite := func(name string, v *float64) {
		if v == nil {
			f.add(name, "is required")
		} else if math.IsNaN(*v) || math.IsInf(*v, 0) {
			f.add(name, "must be a finite number")
		}
	}
	switch r.Kind {
	case RuleThreshold, RuleOrderBook:
		if r.Op != OpAbove && r.Op != OpBelow {
			f.add("op", "%q must be above or below", r.Op)
		}
		finite("value", r.Value)
		if r.Other != nil {
			f.add("other", "is only for cross rules")
		}
	case RuleCross:
		if r.Op != OpCrossesAbove && r.Op != OpCrossesBelow {
			f.add("op", "%q must be crosses_above or crosses_below", r.Op)
		}
		switch {
		case r.Other != nil && r.Value != nil:
			f.add("other", "give either other or value, not both")
		case r.Other != nil && strings.TrimSpace(r.Other.Indicator) == "":
			f.add("other.indicator", "is required")
		case r.Other == nil:
			finite("value", r.Value)
		}
	case RuleMACDVZone:
		switch r.Zone {
		case "", ZoneOverbought, ZoneBullish, ZoneRanging, ZoneBearish, ZoneOversold:
		default:
			f.add("zone", "%q is not one of overbought, bullish, ranging, bearish, oversold", r.Zone)
		}
	case "":
		f.add("kind", "is required (threshold, cross, macdv_zone, orderbook)")
	default:
		f.add("kind", "%q is not one of threshold, cross, macdv_zone, orderbook", r.Kind)
	}
}

// validateRuleFor checks one rule (Rule.Validate) and how it fits mode m:
// one of the user's symbols, a timeframe of the mode, series that are
// price or indicators of the mode with their fields, and the indicator
// kind a kind of rule needs.
func validateRuleFor(f *fieldErrs, field string, r Rule, m Mode, specs []IndicatorSpec, symbols []string) {
	f.check(field, r.Validate())
	if ValidateSymbol(r.Symbol) == nil && !slices.Contains(symbols, r.Symbol) {
		f.add(field+".symbol", "%q is not one of the user's symbols", r.Symbol)
	}
	if r.Timeframe.Validate() == nil && !slices.Contains(m.Timeframes(), r.Timeframe) {
		f.add(field+".timeframe", "%s is not a timeframe of mode %s %v", r.Timeframe, m, m.Timeframes())
	}
	if strings.TrimSpace(r.Indicator) == "" {
		return
	}
	ref := r.SeriesRef
	if r.Kind == RuleMACDVZone && ref.Field == "" {
		ref.Field = "macd"
	}
	spec := checkRef(f, field, ref, m, specs)
	switch r.Kind {
	case RuleOrderBook:
		if spec == nil || (spec.Kind != KindOBImbalance && spec.Kind != KindOBSpread && spec.Kind != KindOBDepth) {
			f.add(field+".indicator", "orderbook rules need ob_imbalance, ob_spread or ob_depth")
		}
	case RuleCross:
		if r.Other != nil && r.Value == nil && strings.TrimSpace(r.Other.Indicator) != "" {
			checkRef(f, field+".other", *r.Other, m, specs)
		}
	case RuleMACDVZone:
		if spec == nil || spec.Kind != KindMACDV {
			f.add(field+".indicator", "macdv_zone rules need a macdv indicator")
		}
	}
}

// checkRef checks that ref is price or an indicator of the mode with one of
// its fields, and returns the indicator's spec (nil for price or none).
func checkRef(f *fieldErrs, name string, ref SeriesRef, m Mode, specs []IndicatorSpec) *IndicatorSpec {
	if ref.IsPrice() {
		if ref.Field != "" && ref.Field != defaultFieldName {
			f.add(name+".field", "price has only the field value")
		}
		return nil
	}
	for i := range specs {
		if specs[i].Name == ref.Indicator {
			if !slices.Contains(specs[i].Fields(), ref.FieldOrDefault()) {
				f.add(name+".field", "%q is not a field of %s %v", ref.FieldOrDefault(), ref.Indicator, specs[i].Fields())
			}
			return &specs[i]
		}
	}
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Name
	}
	f.add(name+".indicator", "%q is not price or an indicator of mode %s %v", ref.Indicator, m, names)
	return nil
}

// Validate checks the whole settings document: mode, symbols, indicator
// parameters, every rule of every mode (against that mode's timeframes and
// indicators) and the webhook. All problems are reported together, each
// naming its field (rules by index and id).
func (s Settings) Validate(l Limits) error {
	var f fieldErrs
	if s.Mode == "" {
		f.add("mode", "is required (position-monitor, scalper-macdv or scalper-orderbook)")
	} else {
		f.check("mode", s.Mode.Validate())
	}
	if len(s.Symbols) == 0 {
		f.add("symbols", "needs at least one symbol")
	}
	validateSymbolList(&f, "symbols", s.Symbols, l.MaxSymbols)
	f.check("indicators", s.Indicators.Validate())
	total := 0
	for m, rules := range s.Rules {
		if err := m.Validate(); err != nil {
			f.add("rules", "key %q is not a mode", m)
			continue
		}
		total += len(rules)
		specs := s.Indicators.IndicatorSpecs(m)
		ids := map[string]bool{}
		for i, r := range rules {
			field := fmt.Sprintf("rules.%s[%d]", m, i)
			if r.ID != "" {
				field = fmt.Sprintf("rules.%s[%d](%s)", m, i, r.ID)
			}
			if ids[r.ID] {
				f.add(field+".id", "%q is used twice", r.ID)
			}
			ids[r.ID] = true
			validateRuleFor(&f, field, r, m, specs, s.Symbols)
		}
	}
	if l.MaxRules > 0 && total > l.MaxRules {
		f.add("rules", "has %d rules, the limit is %d", total, l.MaxRules)
	}
	if w := s.Webhook; w != nil {
		u, err := url.Parse(w.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			f.add("webhook.url", "%q must be an http or https URL", w.URL)
		}
		if w.SecretEnv != "" && !userTokenRE.MatchString(w.SecretEnv) {
			f.add("webhook.secret_env", "%q is not an environment variable name", w.SecretEnv)
		}
	}
	return f.err()
}

// ParseSettings decodes a settings document strictly and validates it.
func ParseSettings(doc []byte, l Limits) (Settings, error) {
	s, err := DecodeStrict[Settings](doc)
	if err != nil {
		return Settings{}, err
	}
	return s, s.Validate(l)
}

// RulesFor is the rules of mode m.
func (s Settings) RulesFor(m Mode) []Rule { return s.Rules[m] }
