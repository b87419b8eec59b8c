package report

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCompare(t *testing.T) {
	tests := []struct {
		name    string
		value   Stat
		base    Stat
		inverse bool
		want    *Ratio
	}{
		{"latency", Stat{Median: 4, Tail: 10}, Stat{Median: 2, Tail: 2}, false, &Ratio{Median: 2, Tail: 5, Of: "vigil/baseline"}},
		{"times faster", Stat{Median: 100, Tail: 200}, Stat{Median: 10000, Tail: 30000}, true, &Ratio{Median: 100, Tail: 150, Of: "baseline/vigil"}},
		{"zero baseline has no ratio", Stat{Median: 4, Tail: 4}, Stat{}, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Row{Value: tt.value}
			r.Compare("base", tt.base, tt.inverse)
			if (r.Ratio == nil) != (tt.want == nil) || (r.Ratio != nil && *r.Ratio != *tt.want) {
				t.Fatalf("Ratio = %+v, want %+v", r.Ratio, tt.want)
			}
		})
	}
}

func TestRunTableAndJSON(t *testing.T) {
	row := Row{Number: 1, Figure: "ack", Name: "command ACK latency", Unit: "ms", Value: Stat{N: 3, Median: 2, Tail: 8, TailName: "p99"}, Target: "≤ 2×"}
	row.Compare("bare RTT", Stat{N: 3, Median: 0.1, Tail: 0.4, TailName: "p99"}, false)
	row.SetMet(false)
	run := &Run{Rows: []Row{row, {Number: 7, Name: "state", Unit: "KiB", Value: Single(130), Target: "reported"}},
		Errors: map[string]string{"backfill": "no fake"}}
	var buf bytes.Buffer
	if err := run.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"command ACK latency (ms)", "2.00 / 8.00 p99", "0.100 / 0.400 p99  [bare RTT]", "20.00 / 20.00  (vigil/baseline)", "NO", "130.0", "not measured: no fake"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
	path := filepath.Join(t.TempDir(), "run.json")
	if err := run.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var back Run
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Rows[0].Ratio.Median != 20 || *back.Rows[0].Met || back.Rows[1].Met != nil {
		t.Fatalf("JSON round trip lost the rows: %+v", back.Rows)
	}
}

func TestThisMachine(t *testing.T) {
	m := ThisMachine()
	if m.CPUs < 1 || m.Go == "" {
		t.Fatalf("ThisMachine = %+v", m)
	}
	if _, err := os.Stat("/proc/cpuinfo"); err == nil && (m.MemoryKiB == 0 || m.LoadAtStart == "") {
		t.Fatalf("ThisMachine on Linux = %+v, want memory and load", m)
	}
}
