package stack

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"vigil.dev/pkg/binaries"
	"vigil.dev/pkg/localstack"
)

func TestOverlayAddsFilesWithoutTouchingTheTree(t *testing.T) {
	root := t.TempDir()
	for _, profiling := range []bool{false, true} {
		path, err := Overlay(root, filepath.Join(t.TempDir(), "overlay"), profiling)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var o struct{ Replace map[string]string }
		if err := json.Unmarshal(b, &o); err != nil {
			t.Fatal(err)
		}
		want := 2
		if profiling {
			want += len(binaries.Services)
		}
		if len(o.Replace) != want {
			t.Errorf("profiling=%v: %d overlay files, want %d: %v", profiling, len(o.Replace), want, o.Replace)
		}
		for target, src := range o.Replace {
			if !strings.HasPrefix(target, root) {
				t.Errorf("overlay target %s is outside the repository %s", target, root)
			}
			if _, err := os.Stat(src); err != nil {
				t.Errorf("overlay source of %s: %v", target, err)
			}
			if _, err := os.Stat(target); err == nil {
				t.Errorf("overlay target %s exists on disk", target)
			}
		}
	}
}

// TestStackRunsAProfiledServiceAndStopsIt builds the binaries with the
// pprof file, runs vigil-indicators against fresh servers, reads its RSS
// and a CPU profile, and stops everything.
func TestStackRunsAProfiledServiceAndStopsIt(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the services and starts servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	overlay, err := Overlay(root, filepath.Join(work, "overlay"), true)
	if err != nil {
		t.Fatal(err)
	}
	bins, err := Build(ctx, root, filepath.Join(work, "bin"), overlay, true)
	if err != nil {
		t.Fatal(err)
	}
	servers, err := StartServers(ctx, filepath.Join(work, "servers"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := servers.Stop(); err != nil {
			t.Error(err)
		}
	}()
	nc, err := nats.Connect(servers.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	l := NewLauncher(bins, servers, nc)
	p, err := l.Start(ctx, Indicators, "ind-1")
	if err != nil {
		t.Fatal(err)
	}
	if p.ID == "" || l.Instances(Indicators)["ind-1"] != p.ID {
		t.Fatalf("instance id %q, $SRV.PING finds %v", p.ID, l.Instances(Indicators))
	}
	if rss, err := p.RSS(); err != nil || rss < 1<<20 {
		t.Fatalf("RSS = %d, %v; want at least 1 MiB", rss, err)
	}
	prof, err := p.CPUProfile(ctx, time.Second)
	if err != nil || len(prof) == 0 {
		t.Fatalf("CPUProfile: %d bytes, %v", len(prof), err)
	}
	if err := l.StopAll(); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	if exited, _ := p.Exited(); !exited {
		t.Fatal("the service still runs after StopAll")
	}
	fake, err := StartFakeExchange(ctx, bins, work, "-minutes", "10", "-bars", "5")
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Stop()
	if !strings.HasPrefix(fake.RESTURL, "http://127.0.0.1:") || !strings.HasPrefix(fake.WebSocketURL, "ws://127.0.0.1:") {
		t.Fatalf("fake exchange URLs %q %q", fake.RESTURL, fake.WebSocketURL)
	}
}
