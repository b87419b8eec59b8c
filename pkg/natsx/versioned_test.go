package natsx_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

// logBuffer is a logger whose output the test reads.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

func connectJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	srv := testenv.StartNATS(t)
	nc, err := natsx.Connect(context.Background(), config.NATS{URL: srv.URL()}, "test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// testStream is the configuration of a test stream at version v, MaxAge v hours.
func testStream(v int) jetstream.StreamConfig {
	return jetstream.StreamConfig{Name: "UPGRADE", Subjects: []string{"upgrade.>"}, Storage: jetstream.FileStorage,
		MaxAge: time.Duration(v) * time.Hour, Metadata: natsx.Versioned(v)}
}

// TestEnsureStreamNeverDowngrades: the next version's configuration is
// applied in place (same stream, messages kept); an instance of the
// previous version starting again leaves it as it is and logs it; a
// stream from before versions is updated and gets one; a change the
// server cannot make in place fails naming the stream and changes nothing.
func TestEnsureStreamNeverDowngrades(t *testing.T) {
	js := connectJS(t)
	ctx := context.Background()
	if _, err := natsx.EnsureStream(ctx, js, testStream(1), natsx.LogTo(quiet)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "upgrade.a", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	s, _ := js.Stream(ctx, "UPGRADE")
	created := s.CachedInfo().Created

	var newer logBuffer
	if _, err := natsx.EnsureStream(ctx, js, testStream(2), natsx.LogTo(newer.logger())); err != nil {
		t.Fatal(err)
	}
	info := streamInfo(t, js, "UPGRADE")
	if info.Config.MaxAge != 2*time.Hour || natsx.ConfigVersion(info.Config.Metadata) != 2 || !info.Created.Equal(created) || info.State.Msgs != 1 {
		t.Errorf("after the newer version: max age %s, version %d, created %s (was %s), %d messages",
			info.Config.MaxAge, natsx.ConfigVersion(info.Config.Metadata), info.Created, created, info.State.Msgs)
	}
	if !strings.Contains(newer.String(), "from_version=1 to_version=2") {
		t.Errorf("update not logged: %s", newer.String())
	}

	var older logBuffer
	if _, err := natsx.EnsureStream(ctx, js, testStream(1), natsx.LogTo(older.logger())); err != nil {
		t.Fatal(err)
	}
	if info := streamInfo(t, js, "UPGRADE"); info.Config.MaxAge != 2*time.Hour || natsx.ConfigVersion(info.Config.Metadata) != 2 {
		t.Errorf("the previous version reverted the stream: max age %s, version %d", info.Config.MaxAge, natsx.ConfigVersion(info.Config.Metadata))
	}
	if log := older.String(); !strings.Contains(log, "left as it is") || !strings.Contains(log, "stream=UPGRADE") ||
		!strings.Contains(log, "server_config_version=2 own_config_version=1") {
		t.Errorf("the kept stream is not logged as such: %s", log)
	}

	memory := testStream(3)
	memory.Storage = jetstream.MemoryStorage
	if _, err := natsx.EnsureStream(ctx, js, memory, natsx.LogTo(quiet)); err == nil || !strings.Contains(err.Error(), "stream UPGRADE") {
		t.Errorf("storage change: %v, want an error naming the stream", err)
	}
	if info := streamInfo(t, js, "UPGRADE"); info.Config.Storage != jetstream.FileStorage || natsx.ConfigVersion(info.Config.Metadata) != 2 || info.State.Msgs != 1 {
		t.Errorf("the refused change changed the stream: %+v", info.Config)
	}

	legacy := jetstream.StreamConfig{Name: "LEGACY", Subjects: []string{"legacy.>"}, MaxAge: time.Hour,
		Metadata: map[string]string{"owner": "ops"}}
	if _, err := js.CreateStream(ctx, legacy); err != nil {
		t.Fatal(err)
	}
	legacy.MaxAge, legacy.Metadata = 2*time.Hour, natsx.Versioned(1)
	if _, err := natsx.EnsureStream(ctx, js, legacy, natsx.LogTo(quiet)); err != nil {
		t.Fatal(err)
	}
	if info := streamInfo(t, js, "LEGACY"); info.Config.MaxAge != 2*time.Hour || natsx.ConfigVersion(info.Config.Metadata) != 1 || info.Config.Metadata["owner"] != "ops" {
		t.Errorf("a stream from before versions: max age %s, metadata %v", info.Config.MaxAge, info.Config.Metadata)
	}
	if _, err := natsx.EnsureStream(ctx, js, jetstream.StreamConfig{Name: "NOVERSION", Subjects: []string{"nov.>"}}); err == nil {
		t.Error("a configuration without a version was accepted")
	}
}

func streamInfo(t *testing.T, js jetstream.JetStream, name string) *jetstream.StreamInfo {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo()
}

// TestEnsureKeyValueAndConsumerNeverDowngrade: buckets and shared durable
// consumers follow the same rule as streams, in both directions.
func TestEnsureKeyValueAndConsumerNeverDowngrade(t *testing.T) {
	js := connectJS(t)
	ctx := context.Background()
	bucket := func(v int) jetstream.KeyValueConfig {
		return jetstream.KeyValueConfig{Bucket: "UPGRADE_KV", History: uint8(v), Storage: jetstream.FileStorage, Metadata: natsx.Versioned(v)}
	}
	for _, step := range []struct{ run, want int }{{1, 1}, {3, 3}, {2, 3}} {
		kv, err := natsx.EnsureKeyValue(ctx, js, bucket(step.run), natsx.LogTo(quiet))
		if err != nil {
			t.Fatal(err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.History() != int64(step.want) || natsx.ConfigVersion(st.Metadata()) != step.want {
			t.Errorf("bucket after version %d: history %d, version %d, want %d", step.run, st.History(), natsx.ConfigVersion(st.Metadata()), step.want)
		}
	}
	if _, err := natsx.EnsureStream(ctx, js, testStream(1), natsx.LogTo(quiet)); err != nil {
		t.Fatal(err)
	}
	consumer := func(v int) jetstream.ConsumerConfig {
		return jetstream.ConsumerConfig{Durable: "projector", AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: time.Duration(v) * 10 * time.Second, Metadata: natsx.Versioned(v)}
	}
	for _, step := range []struct{ run, want int }{{1, 1}, {3, 3}, {2, 3}} {
		c, err := natsx.EnsureConsumer(ctx, js, "UPGRADE", consumer(step.run), natsx.LogTo(quiet))
		if err != nil {
			t.Fatal(err)
		}
		cfg := c.CachedInfo().Config
		if cfg.AckWait != time.Duration(step.want)*10*time.Second || natsx.ConfigVersion(cfg.Metadata) != step.want {
			t.Errorf("consumer after version %d: ack wait %s, version %d, want %d", step.run, cfg.AckWait, natsx.ConfigVersion(cfg.Metadata), step.want)
		}
	}
}

// TestEnsureStreamsLeavesTheNextVersionsStreams: when the next release
// has updated a contract stream (a higher version, another retention),
// this release's EnsureStreams (an instance restarting mid-upgrade) keeps
// it, and still creates what is missing.
func TestEnsureStreamsLeavesTheNextVersionsStreams(t *testing.T) {
	js := connectJS(t)
	ctx := context.Background()
	if err := natsx.EnsureStreams(ctx, js, natsx.LogTo(quiet)); err != nil {
		t.Fatal(err)
	}
	next := streamInfo(t, js, contract.StreamCandles).Config
	next.MaxAge = 48 * time.Hour
	next.Metadata = natsx.Versioned(natsx.ConfigVersion(next.Metadata) + 1)
	if _, err := js.UpdateStream(ctx, next); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, contract.StreamResults); err != nil {
		t.Fatal(err)
	}
	var log logBuffer
	if err := natsx.EnsureStreams(ctx, js, natsx.LogTo(log.logger())); err != nil {
		t.Fatal(err)
	}
	if info := streamInfo(t, js, contract.StreamCandles); info.Config.MaxAge != 48*time.Hour {
		t.Errorf("the next version's %s was reverted: max age %s", contract.StreamCandles, info.Config.MaxAge)
	}
	if !strings.Contains(log.String(), "stream="+contract.StreamCandles) {
		t.Errorf("not logged: %s", log.String())
	}
	streamInfo(t, js, contract.StreamResults) // created again
}

var updateVersions = flag.Bool("update-config-versions", false, "record the current stream and bucket configurations in testdata/config_versions.json")

// TestConfigVersions fails when a stream or bucket configuration changed
// without a new version (natsx.Versioned): instances would not know which
// of two configurations of the same version is the newer. After changing
// one, bump its version and record it:
//
//	go test ./pkg/natsx/ -run TestConfigVersions -update-config-versions
func TestConfigVersions(t *testing.T) {
	type recorded struct {
		Version int             `json:"version"`
		Config  json.RawMessage `json:"config"`
	}
	current := map[string]recorded{}
	add := func(name string, cfg any, metadata map[string]string) {
		raw, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		current[name] = recorded{Version: natsx.ConfigVersion(metadata), Config: raw}
	}
	for _, s := range append(natsx.StreamConfigs(natsx.DefaultPartitions), natsx.CommandsStream) {
		add("stream "+s.Name, s, s.Metadata)
	}
	for _, b := range []jetstream.KeyValueConfig{natsx.StateBucket, natsx.QueueBucket, natsx.UsersBucket} {
		add("kv "+b.Bucket, b, b.Metadata)
	}
	path := filepath.Join("testdata", "config_versions.json")
	if *updateVersions {
		raw, err := json.MarshalIndent(current, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(raw, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var golden map[string]recorded
	if err := json.Unmarshal(raw, &golden); err != nil {
		t.Fatal(err)
	}
	for name, cur := range current {
		rec, ok := golden[name]
		switch {
		case cur.Version < 1:
			t.Errorf("%s has no version (natsx.Versioned)", name)
		case !ok || cur.Version > rec.Version:
			t.Errorf("%s: version %d is not recorded; record it with -update-config-versions", name, cur.Version)
		case cur.Version < rec.Version:
			t.Errorf("%s: version %d is older than the recorded %d", name, cur.Version, rec.Version)
		case !jsonEqual(t, cur.Config, rec.Config):
			t.Errorf("%s changed but kept version %d: bump its natsx.Versioned and record it with -update-config-versions\nnow:      %s\nrecorded: %s",
				name, cur.Version, cur.Config, rec.Config)
		}
	}
}

func jsonEqual(t *testing.T, a, b json.RawMessage) bool {
	t.Helper()
	var ca, cb bytes.Buffer
	if err := json.Compact(&ca, a); err != nil {
		t.Fatal(err)
	}
	if err := json.Compact(&cb, b); err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ca.Bytes(), cb.Bytes())
}
