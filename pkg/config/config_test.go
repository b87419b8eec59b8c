package config

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

type testConfig struct {
	NATS
	Service
	Redis
	Postgres
	APIKey string `env:"VIGIL_TEST_API_KEY" secret:"true" help:"a secret"`
}

func (c testConfig) Validate() error { return ValidateAll(c.NATS, c.Service, c.Redis, c.Postgres) }

func setEnv(t *testing.T, kv map[string]string) {
	t.Helper()
	for _, k := range []string{"NATS_URL", "NATS_CREDS", "VIGIL_STREAM_REPLICAS", "VIGIL_PARTITIONS", "REDIS_URL", "DATABASE_URL", "VIGIL_LOG_LEVEL", "VIGIL_SHUTDOWN_TIMEOUT", "VIGIL_INSTANCE", "VIGIL_TEST_API_KEY"} {
		t.Setenv(k, "")
	}
	for k, v := range kv {
		t.Setenv(k, v)
	}
}

var goodEnv = map[string]string{
	"REDIS_URL":          "redis://127.0.0.1:6379/0",
	"DATABASE_URL":       "postgres://vigil:hunter2@127.0.0.1:5432/vigil",
	"VIGIL_TEST_API_KEY": "sekrit",
}

func with(overrides map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range goodEnv {
		out[k] = v
	}
	for k, v := range overrides {
		out[k] = v
	}
	return out
}

func TestLoadDefaults(t *testing.T) {
	setEnv(t, goodEnv)
	var cfg testConfig
	if err := Load(&cfg, "vigil-test", "test", nil, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if cfg.NATS.URL != "nats://127.0.0.1:4222" || cfg.NATS.StreamReplicas != 1 || cfg.PartitionCount() != DefaultPartitions || cfg.LogLevel != "info" || cfg.ShutdownTimeout != 10*time.Second {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
	if cfg.InstanceName() == "" {
		t.Fatal("instance name")
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"missing redis", with(map[string]string{"REDIS_URL": ""}), "REDIS_URL"},
		{"bad redis scheme", with(map[string]string{"REDIS_URL": "http://x"}), "REDIS_URL"},
		{"bad nats", with(map[string]string{"NATS_URL": "127.0.0.1:4222"}), "NATS_URL"},
		{"bad database", with(map[string]string{"DATABASE_URL": "mysql://x/y"}), "DATABASE_URL"},
		{"missing creds file", with(map[string]string{"NATS_CREDS": "/nonexistent/x.creds"}), "NATS_CREDS"},
		{"too many replicas", with(map[string]string{"VIGIL_STREAM_REPLICAS": "7"}), "VIGIL_STREAM_REPLICAS"},
		{"negative replicas", with(map[string]string{"VIGIL_STREAM_REPLICAS": "-1"}), "VIGIL_STREAM_REPLICAS"},
		{"zero partitions", with(map[string]string{"VIGIL_PARTITIONS": "0"}), "VIGIL_PARTITIONS: 0 is not between 1 and 1024"},
		{"negative partitions", with(map[string]string{"VIGIL_PARTITIONS": "-3"}), "VIGIL_PARTITIONS: -3 is not between 1 and 1024"},
		{"too many partitions", with(map[string]string{"VIGIL_PARTITIONS": "1025"}), "VIGIL_PARTITIONS: 1025"},
		{"partitions not a number", with(map[string]string{"VIGIL_PARTITIONS": "many"}), "VIGIL_PARTITIONS"},
		{"bad level", with(map[string]string{"VIGIL_LOG_LEVEL": "loud"}), "VIGIL_LOG_LEVEL"},
		{"bad duration", with(map[string]string{"VIGIL_SHUTDOWN_TIMEOUT": "soon"}), "VIGIL_SHUTDOWN_TIMEOUT"},
		{"zero duration", with(map[string]string{"VIGIL_SHUTDOWN_TIMEOUT": "0s"}), "VIGIL_SHUTDOWN_TIMEOUT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setEnv(t, tt.env)
			var cfg testConfig
			err := Load(&cfg, "vigil-test", "test", nil, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want an error naming %s, got %v", tt.want, err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error leaks a password: %q", err)
			}
		})
	}
}

func TestHelpListsEveryVariable(t *testing.T) {
	setEnv(t, nil)
	var out bytes.Buffer
	var cfg testConfig
	err := Load(&cfg, "vigil-test", "does tests", []string{"-h"}, &out)
	if !errors.Is(err, ErrHelp) {
		t.Fatalf("want ErrHelp, got %v", err)
	}
	for _, name := range []string{"NATS_URL", "NATS_CREDS", "REDIS_URL", "DATABASE_URL", "VIGIL_LOG_LEVEL", "VIGIL_SHUTDOWN_TIMEOUT", "VIGIL_INSTANCE", "VIGIL_TEST_API_KEY", "OTEL_", "(required)"} {
		if !strings.Contains(out.String(), name) {
			t.Errorf("usage lacks %s:\n%s", name, out.String())
		}
	}
	if err := Load(&cfg, "vigil-test", "x", []string{"-bogus"}, &out); err == nil || errors.Is(err, ErrHelp) {
		t.Fatalf("unknown flag: %v", err)
	}
}

func TestLogValueMasksSecrets(t *testing.T) {
	setEnv(t, goodEnv)
	var cfg testConfig
	if err := Load(&cfg, "vigil-test", "test", nil, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	got := LogValue(&cfg).String()
	if strings.Contains(got, "hunter2") || strings.Contains(got, "sekrit") {
		t.Fatalf("secrets in log value: %s", got)
	}
	if !strings.Contains(got, "vigil:***@127.0.0.1") || !strings.Contains(got, "VIGIL_TEST_API_KEY=***") {
		t.Fatalf("masked values missing: %s", got)
	}
}

func TestMaskURL(t *testing.T) {
	tests := map[string]string{
		"postgres://u:p@h:1/db":   "postgres://u:***@h:1/db",
		"redis://h:6379/0":        "redis://h:6379/0",
		"nats://user@h:4222":      "nats://user@h:4222",
		"not a url at all %zz":    "not a url at all %zz",
		"rediss://:token@h:6380/": "rediss://:***@h:6380/",
		"nats://a:pw1@h1:4222,nats://a:pw2@h2:4222,nats://h3:4222": "nats://a:***@h1:4222,nats://a:***@h2:4222,nats://h3:4222",
		"postgres://u:p%zz@h/db":                                   "postgres://***@h/db",
	}
	for in, want := range tests {
		if got := MaskURL(in); got != want {
			t.Errorf("MaskURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRedisSentinelURL(t *testing.T) {
	for _, tc := range []struct {
		url     string
		wantErr string
	}{
		{"redis://127.0.0.1:26379/0?master_name=vigil&addr=127.0.0.1:26380", ""},
		{"rediss://s1:26379/0?master_name=vigil", ""},
		{"redis://127.0.0.1:26379/0?master_name=", "master_name is empty"},
		{"unix://x?master_name=vigil", "REDIS_URL"},
	} {
		err := Redis{URL: tc.url}.Validate()
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: err %v, want %q", tc.url, err, tc.wantErr)
		}
	}
	if !IsSentinelURL("redis://h:26379?master_name=m") || IsSentinelURL("redis://h:6379/0") {
		t.Error("IsSentinelURL misclassifies")
	}
}

// renamedConfig has a variable that was renamed.
type renamedConfig struct {
	QueueLimit int `env:"VIGIL_TEST_CONTROL_QUEUE_LIMIT" was:"VIGIL_TEST_QUEUE_LIMIT" envDefault:"16"`
}

// TestFormerNamesStillWork: a variable set only under its former name is
// read; the new name wins when both are set; the default applies to
// neither.
func TestFormerNamesStillWork(t *testing.T) {
	for _, tc := range []struct {
		name     string
		env      map[string]string
		want     int
		warnings int
	}{
		{"neither", map[string]string{}, 16, 0},
		{"former only", map[string]string{"VIGIL_TEST_QUEUE_LIMIT": "4"}, 4, 1},
		{"new only", map[string]string{"VIGIL_TEST_CONTROL_QUEUE_LIMIT": "5"}, 5, 0},
		{"both", map[string]string{"VIGIL_TEST_QUEUE_LIMIT": "4", "VIGIL_TEST_CONTROL_QUEUE_LIMIT": "5"}, 5, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("VIGIL_TEST_QUEUE_LIMIT", "")
			t.Setenv("VIGIL_TEST_CONTROL_QUEUE_LIMIT", "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var cfg renamedConfig
			if err := Load(&cfg, "vigil-test", "test", nil, &bytes.Buffer{}); err != nil {
				t.Fatal(err)
			}
			if cfg.QueueLimit != tc.want {
				t.Errorf("queue limit %d, want %d", cfg.QueueLimit, tc.want)
			}
			environ := map[string]string{}
			for k, v := range tc.env {
				environ[k] = v
			}
			if _, renamed := withFormerNames(&cfg, environ); len(renamed) != tc.warnings {
				t.Errorf("renamed %v, want %d", renamed, tc.warnings)
			}
		})
	}
}
