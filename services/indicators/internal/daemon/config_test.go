package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"vigil.dev/pkg/config"
	"vigil.dev/services/indicators/internal/daemon"
)

func TestRunConfig(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string
	}{
		{"help", nil, []string{"-h"}, "help requested"},
		{"no redis", map[string]string{"REDIS_URL": ""}, nil, "REDIS_URL"},
		{"bad redis", map[string]string{"REDIS_URL": "http://x"}, nil, "REDIS_URL"},
		{"retention too small", map[string]string{"REDIS_URL": "redis://127.0.0.1:1/0", "VIGIL_INDICATORS_RETENTION": "5"}, nil, "VIGIL_INDICATORS_RETENTION"},
		{"retention not a number", map[string]string{"REDIS_URL": "redis://127.0.0.1:1/0", "VIGIL_INDICATORS_RETENTION": "lots"}, nil, "VIGIL_INDICATORS_RETENTION"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("REDIS_URL", "")
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var out bytes.Buffer
			err := daemon.Run(context.Background(), tt.args, &out)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err %v, want one line naming %s", err, tt.wantErr)
			}
			if errors.Is(err, config.ErrHelp) && !strings.Contains(out.String(), "VIGIL_INDICATORS_RETENTION") {
				t.Fatalf("usage does not list VIGIL_INDICATORS_RETENTION:\n%s", out.String())
			}
		})
	}
}
