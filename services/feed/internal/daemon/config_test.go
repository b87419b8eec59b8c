package daemon_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"vigil.dev/services/feed/internal/daemon"
)

func TestBadConfigFailsAtStartWithOneLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"unknown source", map[string]string{"VIGIL_FEED_SOURCE": "bitstamp"}, "VIGIL_FEED_SOURCE"},
		{"sim slower than the wall clock", map[string]string{"VIGIL_SIM_SPEED": "0.5"}, "VIGIL_SIM_SPEED"},
		{"bad anchor", map[string]string{"VIGIL_SIM_ANCHOR": "yesterday"}, "VIGIL_SIM_ANCHOR"},
		{"unknown sim clock", map[string]string{"VIGIL_SIM_CLOCK": "sundial"}, "VIGIL_SIM_CLOCK"},
		{"wall clock without a replay", map[string]string{"VIGIL_SIM_CLOCK": "wall", "VIGIL_SIM_REPLAY": "0s"}, "VIGIL_SIM_REPLAY"},
		{"wall clock that never catches up", map[string]string{"VIGIL_SIM_CLOCK": "wall", "VIGIL_SIM_SPEED": "1"}, "VIGIL_SIM_REPLAY"},
		{"replay without a file", map[string]string{"VIGIL_FEED_SOURCE": "replay"}, "VIGIL_REPLAY_FILE"},
		{"replay of a missing file", map[string]string{"VIGIL_FEED_SOURCE": "replay", "VIGIL_REPLAY_FILE": "/nonexistent.csv"}, "VIGIL_REPLAY_FILE"},
		{"key name without a key", map[string]string{"VIGIL_FEED_SOURCE": "coinbase", "VIGIL_COINBASE_KEY_NAME": "organizations/o/apiKeys/k"}, "VIGIL_COINBASE_KEY_FILE"},
		{"unreadable key", map[string]string{"VIGIL_FEED_SOURCE": "coinbase", "VIGIL_COINBASE_KEY_NAME": "k", "VIGIL_COINBASE_KEY_FILE": "/secret/nope.pem"}, "VIGIL_COINBASE_KEY_FILE"},
		{"websocket URL", map[string]string{"VIGIL_FEED_SOURCE": "coinbase", "VIGIL_COINBASE_WS_URL": "http://x"}, "VIGIL_COINBASE_WS_URL"},
		{"zero rate", map[string]string{"VIGIL_FEED_SOURCE": "coinbase", "VIGIL_COINBASE_PUBLIC_RPS": "0"}, "VIGIL_COINBASE_PUBLIC_RPS"},
		{"book depth", map[string]string{"VIGIL_FEED_BOOK_DEPTH": "5000"}, "VIGIL_FEED_BOOK_DEPTH"},
		{"retention", map[string]string{"VIGIL_FEED_CANDLE_RETENTION": "0"}, "VIGIL_FEED_CANDLE_RETENTION"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("REDIS_URL", "redis://127.0.0.1:1/0")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			err := daemon.Run(context.Background(), nil, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Run = %v, want one line naming %s", err, tc.want)
			}
			if strings.Contains(err.Error(), "/secret/nope.pem") {
				t.Errorf("the error shows the key file's path: %v", err)
			}
		})
	}
}
