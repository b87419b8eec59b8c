package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vigil.dev/pkg/telemetry"
)

func TestConsoleRendersJSONLinesAndKeepsThemInTheLog(t *testing.T) {
	const line = `{"time":"2026-12-02T10:50:26.96Z","level":"INFO","msg":"alert fired","service":"vigil-alerts","instance":"alerts-1","user":"demo","bars":3,"ok":true,"symbols":["BTC-USD","ETH-USD"],"result":{"a":1}}`
	var out bytes.Buffer
	c, err := newConsole(t.TempDir(), &out, telemetry.NewConsoleHandler(&out, slog.LevelInfo, false))
	if err != nil {
		t.Fatal(err)
	}
	emit := c.lines("alerts")
	emit([]byte(line))
	emit([]byte("panic: not JSON"))
	emit([]byte(`{"time":"2026-12-02T10:50:27Z","level":"DEBUG","msg":"too detailed","service":"vigil-alerts"}`))
	c.Close()

	got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(got) != 2 {
		t.Fatalf("console lines %q, want the info record and the raw line (debug is below the level)", got)
	}
	want := `10:50:26.960 INF [alerts] alert fired user=demo bars=3 ok=true symbols=BTC-USD,ETH-USD result="{\"a\":1}"`
	if got[0] != want {
		t.Errorf("rendered\n%q, want\n%q", got[0], want)
	}
	if got[1] != "[alerts] panic: not JSON" {
		t.Errorf("a line that is not JSON is shown as %q, want it prefixed as it is", got[1])
	}
	logged, err := os.ReadFile(c.logPath("alerts"))
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSuffix(string(logged), "\n"), "\n"); len(lines) != 3 || lines[0] != line {
		t.Errorf("alerts.log has %q, want every line as it came", lines)
	}
	if filepath.Base(c.logPath("alerts")) != "alerts.log" {
		t.Errorf("log path %s", c.logPath("alerts"))
	}
}

func TestConsoleWithoutTerminalPrefixesRawLines(t *testing.T) {
	var out bytes.Buffer
	c, err := newConsole(t.TempDir(), &out, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.lines("feed")([]byte(`{"msg":"x"}`))
	if out.String() != "[feed] {\"msg\":\"x\"}\n" {
		t.Errorf("console %q", out.String())
	}
}
