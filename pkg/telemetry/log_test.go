package telemetry_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"vigil.dev/pkg/telemetry"
)

func TestNewLoggerWritesJSONWhenNotOnATerminal(t *testing.T) {
	var out bytes.Buffer
	log := telemetry.NewLogger(&out, slog.LevelInfo, "vigil-feed", "feed-1")
	log.Info("user started", "user", "demo", "symbols", 3)
	log.Debug("not shown")
	var rec map[string]any
	if err := json.Unmarshal(out.Bytes(), &rec); err != nil {
		t.Fatalf("output %q is not one JSON record: %v", out.String(), err)
	}
	for k, want := range map[string]any{"msg": "user started", "level": "INFO", "service": "vigil-feed", "instance": "feed-1", "user": "demo", "symbols": 3.0} {
		if rec[k] != want {
			t.Errorf("%s = %v, want %v", k, rec[k], want)
		}
	}
}

func TestConsoleHandlerWritesOneShortLine(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(telemetry.NewConsoleHandler(&out, slog.LevelInfo, false)).With("service", "vigil-feed", "instance", "feed-1")
	log.Info("alert fired", "user", "demo", "trace_id", "0af7651916cd43dd8448eb211c80319c", "config", strings.Repeat("x", 200))
	log.Debug("not shown")
	line := out.String()
	if strings.Count(line, "\n") != 1 {
		t.Fatalf("want one line, got %q", line)
	}
	for _, want := range []string{"INF alert fired", "user=demo", "config=" + strings.Repeat("x", 59) + "…"} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
	for _, hidden := range []string{"service=", "instance=", "trace_id=", "\x1b["} {
		if strings.Contains(line, hidden) {
			t.Errorf("line %q shows %q", line, hidden)
		}
	}
}

func TestConsoleHandlerColours(t *testing.T) {
	var out bytes.Buffer
	slog.New(telemetry.NewConsoleHandler(&out, slog.LevelInfo, true)).Warn("slow", "took", "3s")
	if !strings.Contains(out.String(), "\x1b[") {
		t.Errorf("no colour in %q", out.String())
	}
}
