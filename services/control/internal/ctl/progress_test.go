package ctl

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"vigil.dev/pkg/contract"
)

// backfillEvents are the events of a two-timeframe force-backfill: control's
// steps (timeframes) with the feed's pages in between.
var backfillEvents = []contract.Progress{
	{Done: 0, Total: 2, Unit: "timeframes", Message: "backfilling BTC-USD [1h 4h]"},
	{Done: 1, Total: 4, Unit: "pages", Message: "BTC-USD 1h page 1"},
	{Done: 2, Total: 4, Unit: "pages", Message: "BTC-USD 1h page 2"},
	{Done: 1, Total: 2, Unit: "timeframes", Message: "BTC-USD 1h: 1000 candles"},
	{Done: 2, Total: 4, Unit: "pages", Message: "BTC-USD 4h page 2"},
	{Done: 2, Total: 2, Unit: "timeframes", Message: "BTC-USD 4h: 1000 candles"},
}

func newTestView(terminal bool, width int) (*progressView, *bytes.Buffer) {
	var buf bytes.Buffer
	sys := IO{Stderr: &buf, Terminal: func(io.Writer) (bool, int) { return terminal, width }}
	return newProgressView(sys), &buf
}

func TestProgressViewLines(t *testing.T) {
	v, buf := newTestView(false, 0)
	for _, p := range backfillEvents {
		v.update(p)
	}
	v.finish()
	want := `progress: 0/2 timeframes: backfilling BTC-USD [1h 4h]
progress: 0/2 timeframes, 1/4 pages: BTC-USD 1h page 1
progress: 0/2 timeframes, 2/4 pages: BTC-USD 1h page 2
progress: 1/2 timeframes: BTC-USD 1h: 1000 candles
progress: 1/2 timeframes, 2/4 pages: BTC-USD 4h page 2
progress: 2/2 timeframes: BTC-USD 4h: 1000 candles
`
	if buf.String() != want {
		t.Errorf("lines:\n%s\nwant:\n%s", buf, want)
	}
}

func TestProgressViewFraction(t *testing.T) {
	for _, tc := range []struct {
		name   string
		events []contract.Progress
		want   float64
	}{
		{"nothing yet", nil, 0},
		{"first step started", backfillEvents[:1], 0},
		{"half of the first step's pages", backfillEvents[:3], 0.25},
		{"first step done, its pages forgotten", backfillEvents[:4], 0.5},
		{"half of the second step", backfillEvents[:5], 0.75},
		{"done", backfillEvents, 1},
		{"one level only", []contract.Progress{{Done: 3, Total: 4, Unit: "pages"}}, 0.75},
		{"no total", []contract.Progress{{Done: 3, Unit: "rows"}}, 0},
		{"inner beyond its total", []contract.Progress{{Done: 0, Total: 2, Unit: "tf"}, {Done: 9, Total: 4, Unit: "pages"}}, 0.5},
		{"outer beyond its total", []contract.Progress{{Done: 5, Total: 2, Unit: "tf"}}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, _ := newTestView(true, 80)
			for _, p := range tc.events {
				v.update(p)
			}
			if got := v.fraction(); got != tc.want {
				t.Errorf("fraction = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestProgressViewBar(t *testing.T) {
	v, buf := newTestView(true, 70)
	v.update(backfillEvents[0])
	v.update(backfillEvents[2])
	v.finish()
	v.finish()
	v.update(backfillEvents[3]) // after finish: ignored
	out := buf.String()
	frames := strings.Split(strings.TrimSuffix(out, "\n"), "\r\x1b[K")
	if len(frames) != 3 || frames[0] != "" {
		t.Fatalf("want two frames drawn in place, got %q", out)
	}
	// Each frame is cut to the width less one, so the cursor never wraps.
	for i, full := range []string{
		"[░░░░░░░░░░░░░░░░░░░░░░░░]   0%  0/2 timeframes: backfilling BTC-USD [1h 4h]",
		"[██████░░░░░░░░░░░░░░░░░░]  25%  0/2 timeframes, 2/4 pages: BTC-USD 1h page 2",
	} {
		if want := string([]rune(full)[:69]); frames[i+1] != want {
			t.Errorf("frame %d = %q, want %q", i+1, frames[i+1], want)
		}
	}
	if !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
		t.Errorf("finish should end the line once: %q", out)
	}
}

func TestProgressViewFinishWithoutEvents(t *testing.T) {
	v, buf := newTestView(true, 80)
	v.finish()
	if buf.Len() != 0 {
		t.Errorf("finish without a bar wrote %q", buf)
	}
}
