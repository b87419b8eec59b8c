package coinbase

import "testing"

// TestParseDecimal accepts Coinbase's decimal strings and refuses every other
// spelling strconv.ParseFloat would take.
func TestParseDecimal(t *testing.T) {
	accepted := map[string]float64{"0": 0, "91234.56": 91234.56, "0.00000001": 1e-8, "1e3": 1000, "2.5E-05": 2.5e-5}
	for text, want := range accepted {
		got, err := parseDecimal(text)
		if err != nil || got != want {
			t.Errorf("parseDecimal(%q) = %v, %v; want %v", text, got, err, want)
		}
	}
	for _, text := range []string{"", "0x1p1", "1_000", "Inf", "NaN", "+1", "-1", ".5", "1.", "1e", " 1", "1e400"} {
		if v, err := parseDecimal(text); err == nil {
			t.Errorf("parseDecimal(%q) = %v, want an error", text, v)
		}
	}
}
