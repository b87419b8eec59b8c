package ta

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestSpecConstructorsNames(t *testing.T) {
	tests := []struct {
		spec Spec
		name string
	}{
		{SMA(50), "sma_50"},
		{EMA(20), "ema_20"},
		{RSI(14), "rsi_14"},
		{ATR(14), "atr_14"},
		{MACD(12, 26, 9), "macd_12_26_9"},
		{MACDV(12, 26, 9), "macdv_12_26_9"},
		{BBands(20, 2), "bb_20_2"},
		{BBands(20, 2.5), "bb_20_2p5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.spec.Name != tt.name {
				t.Fatalf("Name = %q, want %q", tt.spec.Name, tt.name)
			}
			if err := tt.spec.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestSpecValidate(t *testing.T) {
	tests := []struct {
		name    string
		spec    Spec
		wantMsg string // empty: valid
	}{
		{"period 1 sma", Spec{Name: "s", Kind: KindSMA, Period: 1}, ""},
		{"largest period", Spec{Name: "s", Kind: KindEMA, Period: MaxPeriod}, ""},
		{"empty name", Spec{Kind: KindSMA, Period: 5}, `name ""`},
		{"upper case name", Spec{Name: "EMA_20", Kind: KindEMA, Period: 20}, `name "EMA_20"`},
		{"name with colon", Spec{Name: "ema:20", Kind: KindEMA, Period: 20}, `name "ema:20"`},
		{"name too long", Spec{Name: strings.Repeat("a", 41), Kind: KindEMA, Period: 20}, "must match"},
		{"unknown kind", Spec{Name: "x", Period: 3}, "kind kind(0) is unknown"},
		{"period 0", Spec{Name: "e", Kind: KindEMA}, "period 0 must be in [1, 1000]"},
		{"period too large", Spec{Name: "a", Kind: KindATR, Period: MaxPeriod + 1}, "period 1001 must be in [1, 1000]"},
		{"rsi period 1", Spec{Name: "r", Kind: KindRSI, Period: 1}, "period 1 must be in [2, 1000]"},
		{"ema with fast", Spec{Name: "e", Kind: KindEMA, Period: 5, Fast: 3}, "fast is not used by ema"},
		{"ema with stddev", Spec{Name: "e", Kind: KindEMA, Period: 5, StdDev: 2}, "stddev is not used by ema"},
		{"macd with period", Spec{Name: "m", Kind: KindMACD, Period: 5, Fast: 12, Slow: 26, Signal: 9}, "period is not used by macd"},
		{"macd fast 0", Spec{Name: "m", Kind: KindMACD, Slow: 26, Signal: 9}, "fast 0 must be in [1, 1000]"},
		{"macd fast equals slow", MACD(26, 26, 9), "fast 26 must be less than slow 26"},
		{"macdv fast above slow", MACDV(30, 26, 9), "fast 30 must be less than slow 26"},
		{"macdv signal 0", MACDV(12, 26, 0), "signal 0 must be in [1, 1000]"},
		{"macd slow too large", MACD(12, 1001, 9), "slow 1001 must be in [2, 1000]"},
		{"bbands stddev 0", Spec{Name: "b", Kind: KindBBands, Period: 20}, "stddev 0 must be in (0, 100]"},
		{"bbands stddev negative", Spec{Name: "b", Kind: KindBBands, Period: 20, StdDev: -2}, "stddev -2 must be in (0, 100]"},
		{"bbands stddev too large", Spec{Name: "b", Kind: KindBBands, Period: 20, StdDev: 101}, "stddev 101 must be in (0, 100]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			if tt.wantMsg == "" {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Validate = %v, want ErrInvalidSpec containing %q", err, tt.wantMsg)
			}
		})
	}
}

func TestNewSeriesRejects(t *testing.T) {
	tests := []struct {
		name    string
		specs   []Spec
		opts    []Option
		wantMsg string
	}{
		{"no specs", nil, nil, "specs has 0 indicators"},
		{"too many specs", make([]Spec, MaxSpecs+1), nil, "specs has 65 indicators"},
		{"duplicate name", []Spec{EMA(20), {Name: "ema_20", Kind: KindSMA, Period: 20}}, nil, `name "ema_20" is used twice`},
		{"invalid spec", []Spec{EMA(20), EMA(0)}, nil, "ema_0: period 0"},
		{"replay depth 0", []Spec{EMA(20)}, []Option{WithReplayDepth(0)}, "replay depth 0"},
		{"replay depth too large", []Spec{EMA(20)}, []Option{WithReplayDepth(MaxReplayDepth + 1)}, "replay depth 100001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewSeries(tt.specs, tt.opts...)
			if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tt.wantMsg) || s != nil {
				t.Fatalf("NewSeries = %v, %v; want nil, ErrInvalidSpec containing %q", s, err, tt.wantMsg)
			}
		})
	}
}

func TestSpecJSON(t *testing.T) {
	in := []Spec{MACDV(12, 26, 9), BBands(20, 2), RSI(14)}
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	const want = `[{"name":"macdv_12_26_9","kind":"macdv","fast":12,"slow":26,"signal":9},` +
		`{"name":"bb_20_2","kind":"bbands","period":20,"stddev":2},{"name":"rsi_14","kind":"rsi","period":14}]`
	if string(data) != want {
		t.Fatalf("Marshal = %s\nwant %s", data, want)
	}
	var out []Spec
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	for i := range in {
		if out[i] != in[i] {
			t.Fatalf("round trip of %+v gave %+v", in[i], out[i])
		}
	}
	if err := json.Unmarshal([]byte(`{"name":"x","kind":"wma"}`), new(Spec)); !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("Unmarshal of kind wma: %v, want ErrInvalidSpec", err)
	}
	if _, err := json.Marshal(Spec{Name: "x"}); !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("Marshal of kind 0: %v, want ErrInvalidSpec", err)
	}
}
