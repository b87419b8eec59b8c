package ctl

import (
	"fmt"
	"io"
	"strings"

	"vigil.dev/pkg/contract"
)

// barWidth is the width of the bar itself, in cells.
const barWidth = 24

// progressView draws a command's progress events on stderr: on a terminal
// one line redrawn in place with a bar, otherwise one plain line per event.
//
// A command's events may come in two levels: vigil-control reports the
// steps of force-backfill (unit "timeframes") and the feed the pages of
// the current step (unit "pages"). The first unit seen is the overall
// progress; events of another unit refine the current step, so the bar
// moves smoothly within a step.
type progressView struct {
	w        io.Writer
	terminal bool
	width    int

	outerUnit string
	outer     contract.Progress
	inner     *contract.Progress
	message   string
	drawn     bool
	finished  bool
}

func newProgressView(sys IO) *progressView {
	terminal, width := sys.Terminal(sys.Stderr)
	return &progressView{w: sys.Stderr, terminal: terminal, width: width}
}

// update takes one event and redraws.
func (v *progressView) update(p contract.Progress) {
	if v.finished {
		return
	}
	if v.outerUnit == "" {
		v.outerUnit = p.Unit
	}
	if p.Unit == v.outerUnit {
		v.outer, v.inner = p, nil
	} else {
		inner := p
		v.inner = &inner
	}
	if p.Message != "" {
		v.message = p.Message
	}
	if v.terminal {
		v.redraw()
		return
	}
	fmt.Fprintf(v.w, "progress: %s\n", v.counts())
}

// fraction is the overall progress in [0, 1].
func (v *progressView) fraction() float64 {
	if v.outer.Total <= 0 {
		return 0
	}
	done := float64(v.outer.Done)
	if in := v.inner; in != nil && in.Total > 0 && v.outer.Done < v.outer.Total {
		done += min(1, max(0, float64(in.Done)/float64(in.Total)))
	}
	return min(1, max(0, done/float64(v.outer.Total)))
}

// counts is "1/2 timeframes, 3/10 pages: message".
func (v *progressView) counts() string {
	var parts []string
	if v.outerUnit != "" || v.outer.Total > 0 {
		parts = append(parts, formatCount(v.outer))
	}
	if v.inner != nil {
		parts = append(parts, formatCount(*v.inner))
	}
	s := strings.Join(parts, ", ")
	if v.message != "" {
		s += ": " + v.message
	}
	return s
}

func formatCount(p contract.Progress) string {
	s := fmt.Sprintf("%d/%d", p.Done, p.Total)
	if p.Total <= 0 {
		s = fmt.Sprintf("%d", p.Done)
	}
	if p.Unit != "" {
		s += " " + p.Unit
	}
	return s
}

// redraw draws the line "[████░░░░]  45%  1/2 timeframes, ...: msg" in
// place, cut to the terminal's width.
func (v *progressView) redraw() {
	f := v.fraction()
	filled := int(f*barWidth + 0.5)
	line := fmt.Sprintf("[%s%s] %3.0f%%  %s", strings.Repeat("█", filled), strings.Repeat("░", barWidth-filled), f*100, v.counts())
	if v.width > 1 {
		runes := []rune(line)
		if len(runes) >= v.width {
			line = string(runes[:v.width-1])
		}
	}
	// \r and erase-line redraw in place without scrolling.
	fmt.Fprintf(v.w, "\r\x1b[K%s", line)
	v.drawn = true
}

// finish ends the progress line (the last bar stays visible). It may be
// called more than once.
func (v *progressView) finish() {
	if v.finished {
		return
	}
	v.finished = true
	if v.terminal && v.drawn {
		fmt.Fprintln(v.w)
	}
}
