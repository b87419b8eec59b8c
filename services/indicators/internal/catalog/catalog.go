// Package catalog maps a user's indicator settings onto what
// vigil-indicators computes: the contract's indicator specs of a mode
// (contract.IndicatorParams.IndicatorSpecs) become ta specs for candle
// series and an order-book plan for the scalper-orderbook mode, and ta's
// outputs become the contract's named fields (contract.IndicatorSpec.Fields).
package catalog

import (
	"errors"
	"fmt"
	"math"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/indicators/internal/ta"
)

// ErrUnsupported reports a contract indicator that ta cannot compute with
// the given parameters (for example an RSI of period 1).
var ErrUnsupported = errors.New("indicator not supported")

// Plan is what one series of a user's mode computes.
type Plan struct {
	// Candle are the candle indicators, in the contract's order, named as
	// in Redis keys.
	Candle []ta.Spec
	// Book is set when the mode computes order-book indicators.
	Book *BookPlan
}

// BookPlan configures the order-book indicators ob_imbalance, ob_spread
// and ob_depth.
type BookPlan struct {
	// DepthBps is the band around the mid price, in basis points, within
	// which depth and imbalance are measured.
	DepthBps float64
}

// Names are the indicator names of the plan, candle indicators first.
func (p Plan) Names() []string {
	names := make([]string, 0, len(p.Candle)+3)
	for _, s := range p.Candle {
		names = append(names, s.Name)
	}
	if p.Book != nil {
		names = append(names, string(contract.KindOBImbalance), string(contract.KindOBSpread), string(contract.KindOBDepth))
	}
	return names
}

// Empty reports whether the plan computes nothing.
func (p Plan) Empty() bool { return len(p.Candle) == 0 && p.Book == nil }

// For returns the plan of mode m with the user's params (defaults filled
// in). Indicators that ta cannot compute are left out of the plan and
// reported together in the error, wrapping ErrUnsupported; the plan of
// the others is still returned.
func For(m contract.Mode, params contract.IndicatorParams) (Plan, error) {
	var plan Plan
	var errs []error
	for _, cs := range params.IndicatorSpecs(m) {
		switch cs.Kind {
		case contract.KindOBImbalance, contract.KindOBSpread, contract.KindOBDepth:
			if plan.Book == nil {
				plan.Book = &BookPlan{}
			}
			if cs.DepthBps > 0 {
				plan.Book.DepthBps = cs.DepthBps
			}
			continue
		}
		spec, err := taSpec(cs)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		plan.Candle = append(plan.Candle, spec)
	}
	if plan.Book != nil && !(plan.Book.DepthBps >= 0 && plan.Book.DepthBps <= ta.MaxBandBps) {
		errs = append(errs, fmt.Errorf("%w: depth_bps %v must be in [0, %d]", ErrUnsupported, plan.Book.DepthBps, ta.MaxBandBps))
		plan.Book = nil
	}
	return plan, errors.Join(errs...)
}

// taSpec converts one contract candle indicator, keeping its name.
func taSpec(cs contract.IndicatorSpec) (ta.Spec, error) {
	s := ta.Spec{Name: cs.Name}
	switch cs.Kind {
	case contract.KindSMA:
		s.Kind, s.Period = ta.KindSMA, cs.Period
	case contract.KindEMA:
		s.Kind, s.Period = ta.KindEMA, cs.Period
	case contract.KindRSI:
		s.Kind, s.Period = ta.KindRSI, cs.Period
	case contract.KindATR:
		s.Kind, s.Period = ta.KindATR, cs.Period
	case contract.KindBollinger:
		s.Kind, s.Period, s.StdDev = ta.KindBBands, cs.Period, cs.StdDev
	case contract.KindMACD:
		s.Kind, s.Fast, s.Slow, s.Signal = ta.KindMACD, cs.Fast, cs.Slow, cs.Signal
	case contract.KindMACDV:
		s.Kind, s.Fast, s.Slow, s.Signal = ta.KindMACDV, cs.Fast, cs.Slow, cs.Signal
	default:
		return ta.Spec{}, fmt.Errorf("%w: %s: kind %q", ErrUnsupported, cs.Name, cs.Kind)
	}
	if err := s.Validate(); err != nil {
		return ta.Spec{}, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return s, nil
}

// Fields returns the contract fields of a ta value: "value" for SMA, EMA,
// RSI and ATR; "macd", "signal", "hist" for MACD and MACD-V; "upper",
// "middle", "lower" for Bollinger Bands. ok is false while the indicator
// warms up or if a field is not finite, so no NaN is ever stored.
func Fields(v ta.Value) (fields contract.Fields, ok bool) {
	if v.Warming {
		return nil, false
	}
	f := v.Fields
	switch v.Kind {
	case ta.KindMACD, ta.KindMACDV:
		fields = contract.Fields{"macd": f.MACD, "signal": f.Signal, "hist": f.Hist}
	case ta.KindBBands:
		fields = contract.Fields{"upper": f.Upper, "middle": f.Middle, "lower": f.Lower}
	default:
		fields = contract.Fields{"value": f.Value}
	}
	return fields, finite(fields)
}

// BookFields returns the order-book indicators of m by name:
// ob_imbalance {"value": imbalance in [-1, 1]}, ob_spread {"value": spread
// in basis points of the mid price}, ob_depth {"bid", "ask": quantity
// within the band}. ok is false if a number is not finite.
func BookFields(m ta.BookMetrics) (values map[string]contract.Fields, ok bool) {
	values = map[string]contract.Fields{
		string(contract.KindOBImbalance): {"value": m.Imbalance},
		string(contract.KindOBSpread):    {"value": m.SpreadBps},
		string(contract.KindOBDepth):     {"bid": m.BidDepth, "ask": m.OfferDepth},
	}
	for _, f := range values {
		if !finite(f) {
			return nil, false
		}
	}
	return values, true
}

func finite(f contract.Fields) bool {
	for _, v := range f {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}
