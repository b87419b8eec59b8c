package telemetry

import (
	"context"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/lmittmann/tint"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/term"
)

// NewLogger returns a slog logger at level whose records carry the
// trace_id and span_id of the context they are logged with, plus the
// service and instance names. It writes JSON, one object per line, unless
// w is a terminal: then one short human-readable line per record (see
// NewConsoleHandler), coloured unless NO_COLOR is set or TERM is dumb.
func NewLogger(w io.Writer, level slog.Level, service, instance string) *slog.Logger {
	var h slog.Handler
	if IsTerminal(w) {
		h = NewConsoleHandler(w, level, ColorOK(w))
	} else {
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})
	}
	return slog.New(traceHandler{h}).With("service", service, "instance", instance)
}

// IsTerminal reports whether w is a file on a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// ColorOK reports whether w is a terminal that should get colour: not with
// NO_COLOR set (https://no-color.org) or TERM=dumb.
func ColorOK(w io.Writer) bool {
	return IsTerminal(w) && os.Getenv("NO_COLOR") == "" && os.Getenv("TERM") != "dumb"
}

// consoleHidden are the attributes a console line leaves out: the JSON log
// keeps them, a reader of the terminal does not need them on every line.
var consoleHidden = map[string]bool{"service": true, "instance": true, "trace_id": true, "span_id": true}

// consoleValueMax is the longest attribute value a console line shows; a
// longer one is cut and ends in "…".
const consoleValueMax = 60

// NewConsoleHandler is the terminal's log handler (github.com/lmittmann/tint):
// one short line per record, "15:04:05.000 INF message key=value ...",
// without the service, instance and trace ids, and with long values cut,
// in colour when color is true.
func NewConsoleHandler(w io.Writer, level slog.Leveler, color bool) slog.Handler {
	return tint.NewTextHandler(w, &tint.Options{
		Level:       level,
		TimeFormat:  "15:04:05.000",
		NoColor:     !color,
		ReplaceAttr: shortenConsoleAttr,
	})
}

// shortenConsoleAttr drops the hidden attributes and cuts long values.
func shortenConsoleAttr(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && consoleHidden[a.Key] {
		return slog.Attr{}
	}
	switch a.Value.Kind() {
	case slog.KindString:
		if s := a.Value.String(); len([]rune(s)) > consoleValueMax {
			return slog.String(a.Key, string([]rune(s)[:consoleValueMax-1])+"…")
		}
	case slog.KindDuration:
		return slog.String(a.Key, a.Value.Duration().Round(time.Millisecond).String())
	}
	return a
}

// ParseLevel maps debug, info, warn, error to a slog level (info otherwise).
func ParseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}

// traceHandler adds trace_id and span_id from the record's context.
type traceHandler struct{ slog.Handler }

// Handle implements slog.Handler.
func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(attrs)}
}

// WithGroup implements slog.Handler.
func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}
