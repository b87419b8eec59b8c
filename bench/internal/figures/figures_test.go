package figures

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
)

func TestParseBench(t *testing.T) {
	out := []byte(`goos: linux
BenchmarkUpdate/sma_50-2         	 3877162	       309.7 ns/op	       0 B/op	       0 allocs/op
BenchmarkTalibRecompute/all      	    5000	    221926 ns/op	   98304 B/op	      23 allocs/op
BenchmarkSeriesMemory/position-monitor-2         	       3	 162665118 ns/op	    132708 B/series	         6.000 indicators
PASS
ok  	vigil.dev/services/indicators/internal/ta	0.685s
`)
	want := []benchResult{
		{"BenchmarkUpdate/sma_50", map[string]float64{"ns/op": 309.7, "B/op": 0, "allocs/op": 0}},
		{"BenchmarkTalibRecompute/all", map[string]float64{"ns/op": 221926, "B/op": 98304, "allocs/op": 23}},
		{"BenchmarkSeriesMemory/position-monitor", map[string]float64{"ns/op": 162665118, "B/series": 132708, "indicators": 6}},
	}
	if got := parseBench(out); !reflect.DeepEqual(got, want) {
		t.Fatalf("parseBench =\n%v\nwant\n%v", got, want)
	}
}

func TestPipelinePlan(t *testing.T) {
	tests := []struct {
		series, users, symbols int
	}{
		{1, 1, 1},
		{150, 1, 50},
		{151, 2, 26},
		{1000, 7, 48},
		{10000, 67, 50},
	}
	for _, tt := range tests {
		users, symbols := pipelinePlan(tt.series)
		if users != tt.users || symbols != tt.symbols {
			t.Errorf("pipelinePlan(%d) = %d users × %d symbols, want %d × %d", tt.series, users, symbols, tt.users, tt.symbols)
		}
		if symbols > contract.DefaultLimits.MaxSymbols || users*symbols*3 < tt.series {
			t.Errorf("pipelinePlan(%d) = %d × %d does not cover the series within the symbol limit", tt.series, users, symbols)
		}
	}
}

func TestPipelineSettingsAreValid(t *testing.T) {
	for _, symbols := range []int{1, 2, 50} {
		s := pipelineSettings(symbols)(3)
		if err := s.Validate(contract.DefaultLimits); err != nil {
			t.Errorf("settings with %d symbols: %v", symbols, err)
		}
	}
	if err := commandUserSettings(0).Validate(contract.DefaultLimits); err != nil {
		t.Errorf("command user settings: %v", err)
	}
}

func TestCandleSourceMakesValidAlignedBars(t *testing.T) {
	accounts := []account{{Token: "u", UserID: 1, ExchangeID: 2, Settings: pipelineSettings(2)(0)}}
	src := newCandleSource(accounts, 2, 3)
	if len(src.series) != 6 {
		t.Fatalf("%d series, want 2 symbols × 3 timeframes", len(src.series))
	}
	prev := map[contract.SeriesID]contract.Candle{}
	for j := range 3 {
		for _, c := range src.bar(j) {
			if err := c.Validate(); err != nil {
				t.Fatalf("bar %d of %s: %v", j, c.SeriesID, err)
			}
			if p, ok := prev[c.SeriesID]; ok {
				if step := c.Start - p.Start; step != int64(c.Timeframe.Duration()/time.Second) {
					t.Errorf("%s: bar %d starts %ds after the previous one", c.SeriesID, j, step)
				}
				if c.Open != p.Close {
					t.Errorf("%s: bar %d opens at %v, the previous closed at %v", c.SeriesID, j, c.Open, p.Close)
				}
			}
			prev[c.SeriesID] = c
		}
	}
}

func TestMostInWindow(t *testing.T) {
	at := func(ms ...int) []restRequest {
		base := time.Unix(0, 0)
		out := make([]restRequest, len(ms))
		for i, m := range ms {
			out[i] = restRequest{at: base.Add(time.Duration(m) * time.Millisecond)}
		}
		return out
	}
	tests := []struct {
		name string
		ms   []int
		want int
	}{
		{"none", nil, 0},
		{"paced", []int{0, 500, 1000, 1500}, 2},
		{"burst", []int{0, 10, 20, 990, 1000}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mostInWindow(at(tt.ms...), time.Second); got != tt.want {
				t.Fatalf("mostInWindow = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestLimitedExchangeAnswers429OverTheLimit(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"candles":[]}`))
	}))
	defer upstream.Close()
	x, err := startLimitedExchange(upstream.URL, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer x.close()
	var statuses []int
	for range 5 {
		resp, err := http.Get(x.url + "/api/v3/brokerage/market/products/BTC-USD/candles?granularity=ONE_MINUTE")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
	}
	want := []int{200, 200, 200, 429, 429}
	if !reflect.DeepEqual(statuses, want) {
		t.Fatalf("statuses of 5 requests within a second, limit 3 = %v, want %v", statuses, want)
	}
	seen := x.seen()
	if len(seen) != 5 || seen[3].status != http.StatusTooManyRequests || seen[0].query != "granularity=ONE_MINUTE" {
		t.Fatalf("recorded %+v", seen)
	}
}
