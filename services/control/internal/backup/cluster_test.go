//go:build drill

package backup

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/testenv"
)

// TestRestoreIntoACluster restores a single server's backup into a
// cluster of three with three replicas of every stream (RestoreOptions.
// Replicas, vigilctl restore --replicas 3). Build tag drill (make
// test-drill): starting the cluster makes it too slow for make test.
func TestRestoreIntoACluster(t *testing.T) {
	o := newOrigin(t)
	dir, _ := o.takeBackup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cluster := testenv.StartNATSCluster(t, 3)
	// Placing three replicas needs the meta leader to know all three
	// servers with their current stats.
	testenv.WaitFor(t, 60*time.Second, "the meta leader to know three JetStream peers", func() bool {
		for _, srv := range cluster.Servers {
			if len(srv.JetStreamClusterPeers()) == 3 {
				return true
			}
		}
		return false
	})
	nc, err := nats.Connect(cluster.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	restored, err := Restore(ctx, nc, dir, RestoreOptions{SkipPostgres: true, Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	for name, msgs := range restored.Streams {
		var info *jetstream.StreamInfo
		testenv.WaitFor(t, 30*time.Second, name+" led with two more replicas", func() bool {
			st, err := js.Stream(ctx, name)
			if err != nil {
				return false
			}
			info = st.CachedInfo()
			return info.Cluster != nil && info.Cluster.Leader != "" && len(info.Cluster.Replicas) == 2
		})
		if info.Config.Replicas != 3 || info.State.Msgs != msgs {
			t.Errorf("%s in the cluster: %d replicas configured, %d messages (restored %d); want 3 replicas", name, info.Config.Replicas, info.State.Msgs, msgs)
		}
	}
	checkRestoredNATS(ctx, t, o, js)
}
