package catalog

import (
	"errors"
	"maps"
	"math"
	"slices"
	"testing"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/indicators/internal/ta"
)

// fieldNames are the sorted keys of f.
func fieldNames(f contract.Fields) []string {
	return slices.Sorted(maps.Keys(f))
}

func TestPlanMatchesContract(t *testing.T) {
	custom := contract.IndicatorParams{
		EMA: []int{9, 21}, SMA: []int{200}, RSI: 7, ATR: 10,
		MACD:      &contract.MACDParams{Fast: 8, Slow: 21, Signal: 5},
		MACDV:     &contract.MACDParams{Fast: 6, Slow: 13, Signal: 4},
		Bollinger: &contract.BollingerParam{Period: 10, StdDev: 2.5},
		DepthBps:  25,
	}
	for _, params := range []contract.IndicatorParams{{}, custom} {
		for _, mode := range contract.Modes {
			t.Run(string(mode), func(t *testing.T) {
				plan, err := For(mode, params)
				if err != nil {
					t.Fatal(err)
				}
				specs := params.IndicatorSpecs(mode)
				want := make([]string, len(specs))
				for i, s := range specs {
					want[i] = s.Name
				}
				if got := plan.Names(); !slices.Equal(got, want) {
					t.Fatalf("names %v, contract %v", got, want)
				}
				// Every candle indicator's output fields are the contract's.
				for _, spec := range plan.Candle {
					i := slices.IndexFunc(specs, func(s contract.IndicatorSpec) bool { return s.Name == spec.Name })
					fields, ok := Fields(ta.Value{Name: spec.Name, Kind: spec.Kind, Fields: ta.Fields{Value: 1, MACD: 1, Signal: 1, Hist: 1, Upper: 1, Middle: 1, Lower: 1}})
					if !ok {
						t.Fatalf("%s: not ok", spec.Name)
					}
					wantFields := slices.Sorted(slices.Values(specs[i].Fields()))
					if got := fieldNames(fields); !slices.Equal(got, wantFields) {
						t.Errorf("%s fields %v, contract %v", spec.Name, got, wantFields)
					}
				}
				if plan.Book == nil {
					return
				}
				if want := params.WithDefaults().DepthBps; plan.Book.DepthBps != want {
					t.Errorf("depth_bps %v, want %v", plan.Book.DepthBps, want)
				}
				values, ok := BookFields(ta.BookMetrics{Imbalance: 0.5, SpreadBps: 2, BidDepth: 3, OfferDepth: 4})
				if !ok {
					t.Fatal("book fields not ok")
				}
				for _, s := range specs {
					if got, want := fieldNames(values[s.Name]), slices.Sorted(slices.Values(s.Fields())); !slices.Equal(got, want) {
						t.Errorf("%s fields %v, contract %v", s.Name, got, want)
					}
				}
			})
		}
	}
}

func TestPlanLeavesOutUnsupported(t *testing.T) {
	plan, err := For(contract.ModePositionMonitor, contract.IndicatorParams{RSI: 1})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("want ErrUnsupported, got %v", err)
	}
	if slices.Contains(plan.Names(), "rsi_1") || !slices.Contains(plan.Names(), "ema_20") {
		t.Fatalf("plan %v", plan.Names())
	}
}

func TestFields(t *testing.T) {
	tests := []struct {
		name   string
		value  ta.Value
		want   contract.Fields
		wantOK bool
	}{
		{"ema", ta.Value{Kind: ta.KindEMA, Fields: ta.Fields{Value: 2}}, contract.Fields{"value": 2}, true},
		{"rsi", ta.Value{Kind: ta.KindRSI, Fields: ta.Fields{Value: 55}}, contract.Fields{"value": 55}, true},
		{"macd", ta.Value{Kind: ta.KindMACD, Fields: ta.Fields{MACD: 1, Signal: 2, Hist: -1}}, contract.Fields{"macd": 1, "signal": 2, "hist": -1}, true},
		{"macdv", ta.Value{Kind: ta.KindMACDV, Fields: ta.Fields{MACD: 80, Signal: 70, Hist: 10}}, contract.Fields{"macd": 80, "signal": 70, "hist": 10}, true},
		{"bbands", ta.Value{Kind: ta.KindBBands, Fields: ta.Fields{Upper: 3, Middle: 2, Lower: 1}}, contract.Fields{"upper": 3, "middle": 2, "lower": 1}, true},
		{"warming", ta.Value{Kind: ta.KindEMA, Warming: true}, nil, false},
		{"NaN", ta.Value{Kind: ta.KindATR, Fields: ta.Fields{Value: math.NaN()}}, nil, false},
		{"Inf", ta.Value{Kind: ta.KindMACD, Fields: ta.Fields{Hist: math.Inf(1)}}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Fields(tt.value)
			if ok != tt.wantOK || (ok && !maps.Equal(got, tt.want)) {
				t.Fatalf("got %v %v, want %v %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
	if _, ok := BookFields(ta.BookMetrics{SpreadBps: math.NaN()}); ok {
		t.Fatal("NaN spread accepted")
	}
}
