package nats

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/testenv"
)

// TestTenantAccountLimits shows auth.conf's account limits on the real
// server: alice's 17th connection is refused while bob still connects,
// her 1001st subscription is refused, and a message over 64 KiB cannot
// be published by her.
func TestTenantAccountLimits(t *testing.T) {
	srv := startServer(t)
	for range 16 {
		connect(t, srv.url, "alice", passwords["VIGIL_NATS_ALICE_PASSWORD"], "")
	}
	nc, err := nats.Connect(srv.url, nats.UserInfo("alice", passwords["VIGIL_NATS_ALICE_PASSWORD"]), nats.MaxReconnects(0))
	if err == nil {
		nc.Close()
		t.Fatal("alice's 17th connection was accepted")
	}
	if !strings.Contains(strings.ToLower(err.Error()), "maximum account active connections exceeded") {
		t.Errorf("17th connection: %v, want the account connection limit", err)
	}
	connect(t, srv.url, "bob", passwords["VIGIL_NATS_BOB_PASSWORD"], "")

	bob := connect(t, srv.url, "bob", passwords["VIGIL_NATS_BOB_PASSWORD"], "")
	for range 1000 {
		if _, err := bob.SubscribeSync("vigil.result.bob.x"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bob.SubscribeSync("vigil.result.bob.x"); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the subscription limit error", func() bool {
		return bob.deniedContains("maximum subscriptions exceeded")
	})

	big := make([]byte, 64*1024+1)
	if err := bob.Publish("vigil.cmd.bob.pause", big); !errors.Is(err, nats.ErrMaxPayload) {
		t.Errorf("publish of 64 KiB + 1: %v, want %v", err, nats.ErrMaxPayload)
	}
}
