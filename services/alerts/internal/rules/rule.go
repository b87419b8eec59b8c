package rules

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"vigil.dev/pkg/contract"
)

// macdvField is the MACD-V output a macdv_zone rule reads when its Field is
// empty.
const macdvField = "macd"

// ruleState is one rule with its memory.
type ruleState struct {
	rule contract.Rule
	mem  RuleMemory
}

// verdict is the outcome of comparing a rule's previous and current bar.
type verdict struct {
	fire    bool
	message string
}

// adopt takes over prev, the memory of the rule with the same id before a
// Replace or Restore: all of it when the definition is unchanged, only the
// fired-bar memory otherwise.
func (s *ruleState) adopt(prev RuleMemory) {
	if prev.Definition == s.mem.Definition {
		s.mem = prev
		return
	}
	s.mem.LastFiredBar = prev.LastFiredBar
}

// forgetValues drops the remembered bars, keeping the fired-bar memory.
func (s *ruleState) forgetValues() {
	s.mem.Last = BarValues{}
	s.mem.Before = BarValues{}
}

// evaluate runs the rule on a fresh update u of a timeframe whose bars last
// bar, updating the memory, and returns the alert when it fires.
func (s *ruleState) evaluate(u contract.IndicatorUpdate, bar time.Duration, now time.Time) (contract.Alert, bool) {
	r := s.rule
	if r.Symbol != u.Symbol || r.Timeframe != u.Timeframe {
		return contract.Alert{}, false
	}
	if !u.Closed && r.EvaluateOrDefault() != contract.OnLive {
		return contract.Alert{}, false
	}
	if last := s.mem.Last; last.Start != 0 {
		switch {
		case u.Start < last.Start:
			return contract.Alert{}, false
		case u.Start == last.Start && (!u.Closed || u.Version < last.Version):
			return contract.Alert{}, false
		}
	}
	cur, ok := s.observe(u)
	if !ok {
		return contract.Alert{}, false
	}
	prev, hasPrev := s.closedBar(u.Start - int64(bar/time.Second))
	if u.Closed {
		s.remember(cur)
	}
	if !hasPrev {
		return contract.Alert{}, false
	}
	v := s.judge(prev, cur)
	if !v.fire || !s.mayFire(u.Start) {
		return contract.Alert{}, false
	}
	s.mem.LastFiredBar = u.Start
	msg := fmt.Sprintf("%s %s %s", r.Symbol, r.Timeframe, v.message)
	if !u.Closed {
		msg += " on the live bar"
	}
	return contract.Alert{
		ID:         contract.AlertID(u.User, r.ID, u.Start),
		User:       u.User,
		UserID:     u.UserID,
		ExchangeID: u.ExchangeID,
		RuleID:     r.ID,
		Kind:       r.Kind,
		Symbol:     r.Symbol,
		Timeframe:  r.Timeframe,
		BarStart:   u.Start,
		Message:    msg,
		Value:      cur.Value,
		FiredAt:    now,
	}, true
}

// observe reads the rule's inputs from u; false when one is missing.
func (s *ruleState) observe(u contract.IndicatorUpdate) (BarValues, bool) {
	r := s.rule
	a, ok := seriesValue(u, r.SeriesRef, s.defaultField())
	if !ok {
		return BarValues{}, false
	}
	cur := BarValues{Start: u.Start, Version: u.Version, Value: a}
	if r.Kind == contract.RuleCross && r.Other != nil {
		if cur.Other, ok = seriesValue(u, *r.Other, "value"); !ok {
			return BarValues{}, false
		}
	}
	return cur, true
}

// closedBar is the remembered closed bar that starts at start, if any.
func (s *ruleState) closedBar(start int64) (BarValues, bool) {
	switch start {
	case s.mem.Last.Start:
		return s.mem.Last, s.mem.Last.Start != 0
	case s.mem.Before.Start:
		return s.mem.Before, s.mem.Before.Start != 0
	}
	return BarValues{}, false
}

// remember stores the closed bar cur: a new version of the last bar
// replaces it, a later bar pushes the last one back.
func (s *ruleState) remember(cur BarValues) {
	if cur.Start == s.mem.Last.Start {
		s.mem.Last = cur
		return
	}
	s.mem.Before, s.mem.Last = s.mem.Last, cur
}

// mayFire applies the fired-bar memory and the cooldown to a firing for the
// bar starting at start.
func (s *ruleState) mayFire(start int64) bool {
	last := s.mem.LastFiredBar
	if last == 0 {
		return true
	}
	cooldown := int64(s.rule.CooldownDuration() / time.Second)
	return start > last && start-last >= cooldown
}

// judge compares the previous closed bar with the current one.
func (s *ruleState) judge(prev, cur BarValues) verdict {
	r := s.rule
	name := seriesName(r.SeriesRef, s.defaultField())
	switch r.Kind {
	case contract.RuleThreshold, contract.RuleOrderBook:
		level := *r.Value
		held := func(v float64) bool {
			if r.Op == contract.OpAbove {
				return v > level
			}
			return v < level
		}
		if !held(cur.Value) {
			return verdict{}
		}
		entered := !held(prev.Value)
		if !entered && r.CooldownDuration() == 0 {
			return verdict{}
		}
		verb := "is still " + string(r.Op)
		switch {
		case entered && r.Op == contract.OpAbove:
			verb = "rose above"
		case entered:
			verb = "fell below"
		}
		return verdict{true, fmt.Sprintf("%s %s %s (%s)", name, verb, formatNumber(level), formatNumber(cur.Value))}
	case contract.RuleCross:
		prevB, curB, against := prev.Other, cur.Other, ""
		if r.Other == nil {
			prevB, curB = *r.Value, *r.Value
			against = formatNumber(*r.Value)
		} else {
			against = seriesName(*r.Other, "value")
		}
		var crossed bool
		var verb string
		if r.Op == contract.OpCrossesAbove {
			crossed, verb = prev.Value <= prevB && cur.Value > curB, "crossed above"
		} else {
			crossed, verb = prev.Value >= prevB && cur.Value < curB, "crossed below"
		}
		if !crossed {
			return verdict{}
		}
		if r.Other == nil {
			return verdict{true, fmt.Sprintf("%s %s %s (%s)", name, verb, against, formatNumber(cur.Value))}
		}
		return verdict{true, fmt.Sprintf("%s %s %s (%s vs %s)", name, verb, against, formatNumber(cur.Value), formatNumber(curB))}
	case contract.RuleMACDVZone:
		from, to := contract.ZoneOf(prev.Value), contract.ZoneOf(cur.Value)
		if from == to || (r.Zone != "" && to != r.Zone) {
			return verdict{}
		}
		return verdict{true, fmt.Sprintf("%s entered the %s zone from %s (%s)", name, to, from, formatNumber(cur.Value))}
	}
	return verdict{}
}

// defaultField is the field the rule's main series reads when Field is
// empty.
func (s *ruleState) defaultField() string {
	if s.rule.Kind == contract.RuleMACDVZone {
		return macdvField
	}
	return "value"
}

// seriesValue is the value of ref in u: the close for price, otherwise the
// indicator's field (defaultField when ref has none). False when the
// indicator is warming, absent or not finite.
func seriesValue(u contract.IndicatorUpdate, ref contract.SeriesRef, defaultField string) (float64, bool) {
	if ref.IsPrice() {
		return u.Close, isFinite(u.Close)
	}
	if slices.Contains(u.Warming, ref.Indicator) {
		return 0, false
	}
	field := ref.Field
	if field == "" {
		field = defaultField
	}
	v, ok := u.Values[ref.Indicator][field]
	return v, ok && isFinite(v)
}

// seriesName is how a message names ref: the indicator, with its field when
// that is not the default one.
func seriesName(ref contract.SeriesRef, defaultField string) string {
	if ref.IsPrice() || ref.Field == "" || ref.Field == defaultField {
		return ref.Indicator
	}
	return ref.Indicator + "." + ref.Field
}

// formatNumber renders v for a message: two decimals for |v| >= 1, four
// significant digits below, trailing zeros dropped (70, 71.3, 0.0001235).
func formatNumber(v float64) string {
	decimals := 2
	if a := math.Abs(v); a > 0 && a < 1 {
		decimals = 3 - int(math.Floor(math.Log10(a)))
	}
	s := strconv.FormatFloat(v, 'f', decimals, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "-0" {
		return "0"
	}
	return s
}

// definitionOf is a short fingerprint of everything that defines r, so
// that Replace and Restore can tell an unchanged rule from a changed one.
// The cooldown counts by its length, so "1h" and "60m" are the same.
func definitionOf(r contract.Rule) (string, error) {
	r.Cooldown = r.CooldownDuration().String()
	doc, err := json.Marshal(r)
	if err != nil {
		return "", fmt.Errorf("cannot be encoded: %w", err)
	}
	h := fnv.New64a()
	h.Write(doc)
	return strconv.FormatUint(h.Sum64(), 16), nil
}

func isFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
