package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// console is where the services' output goes: each service's whole output
// to its own file under the logs directory (the full JSON log), and one
// line per record to the terminal, short and readable when it is a
// terminal (rendered by telemetry.NewConsoleHandler), prefixed raw lines
// otherwise.
type console struct {
	dir    string       // the logs directory
	out    io.Writer    // the dev stack's stdout, serialized
	pretty slog.Handler // nil: print the raw lines, prefixed

	mu    sync.Mutex
	files map[string]*os.File
}

// newConsole writes the logs under dir; pretty renders JSON lines for a
// terminal (nil for prefixed raw lines).
func newConsole(dir string, out io.Writer, pretty slog.Handler) (*console, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("devstack: logs: %w", err)
	}
	return &console{dir: dir, out: out, pretty: pretty, files: map[string]*os.File{}}, nil
}

// logPath is the log file of service.
func (c *console) logPath(service string) string {
	return filepath.Join(c.dir, service+".log")
}

// lines returns the line handler of service's output. The file is opened
// for appending on first use, so a restarted service continues it.
func (c *console) lines(service string) func([]byte) {
	prefix := "[" + service + "] "
	return func(line []byte) {
		c.writeFile(service, line)
		if c.pretty != nil && renderJSONLine(c.pretty, service, line) {
			return
		}
		_, _ = c.out.Write(append(append([]byte(prefix), line...), '\n'))
	}
}

// discard returns a line handler that only keeps service's output in its
// log file (Jaeger: too chatty for the terminal).
func (c *console) discard(service string) func([]byte) {
	return func(line []byte) { c.writeFile(service, line) }
}

func (c *console) writeFile(service string, line []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.files[service]
	if f == nil {
		var err error
		f, err = os.OpenFile(c.logPath(service), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return
		}
		c.files[service] = f
	}
	_, _ = f.Write(append(line, '\n'))
}

// Close closes the log files.
func (c *console) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, f := range c.files {
		_ = f.Close()
		delete(c.files, name)
	}
}

// renderJSONLine turns one JSON log line of service (slog's JSON handler:
// time, level, msg, then the attributes in order) into a record on h, the
// message prefixed by the service name. It reports false when line is not
// such a JSON object, which is then shown as it is.
func renderJSONLine(h slog.Handler, service string, line []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return false
	}
	var (
		when  time.Time
		level slog.Level
		msg   string
		attrs []slog.Attr
	)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return false
		}
		switch key {
		case slog.TimeKey:
			var s string
			if json.Unmarshal(raw, &s) == nil {
				when, _ = time.Parse(time.RFC3339Nano, s)
			}
		case slog.LevelKey:
			var s string
			if json.Unmarshal(raw, &s) != nil || level.UnmarshalText([]byte(s)) != nil {
				level = slog.LevelInfo
			}
		case slog.MessageKey:
			_ = json.Unmarshal(raw, &msg)
		default:
			attrs = append(attrs, jsonAttr(key, raw))
		}
	}
	if when.IsZero() {
		when = time.Now()
	}
	ctx := context.Background()
	if !h.Enabled(ctx, level) {
		return true
	}
	r := slog.NewRecord(when, level, "["+service+"] "+msg, 0)
	r.AddAttrs(attrs...)
	_ = h.Handle(ctx, r)
	return true
}

// jsonAttr is one attribute of a JSON log line: strings, numbers and
// booleans as such, arrays of those joined by commas, objects and other
// arrays as their compact JSON.
func jsonAttr(key string, raw json.RawMessage) slog.Attr {
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return slog.String(key, string(raw))
	}
	switch v := v.(type) {
	case string:
		return slog.String(key, v)
	case json.Number:
		return slog.String(key, v.String())
	case bool:
		return slog.Bool(key, v)
	case nil:
		return slog.String(key, "null")
	case []any:
		if joined, ok := joinScalars(v); ok {
			return slog.String(key, joined)
		}
	}
	var compact bytes.Buffer
	if json.Compact(&compact, raw) != nil {
		return slog.String(key, strings.TrimSpace(string(raw)))
	}
	return slog.String(key, compact.String())
}

// joinScalars joins an array of strings, numbers and booleans with commas;
// ok is false when it holds anything else.
func joinScalars(values []any) (joined string, ok bool) {
	parts := make([]string, len(values))
	for i, v := range values {
		switch v := v.(type) {
		case string:
			parts[i] = v
		case json.Number:
			parts[i] = v.String()
		case bool:
			parts[i] = fmt.Sprint(v)
		default:
			return "", false
		}
	}
	return strings.Join(parts, ","), true
}
