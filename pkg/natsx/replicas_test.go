package natsx_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

// startCluster runs a JetStream cluster of n embedded servers on loopback
// and returns their client URLs.
func startCluster(t *testing.T, n int) []string {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = testenv.FreePort(t)
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	var urls []string
	for i := range n {
		srv, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "vigil-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:  routes,
		})
		if err != nil {
			t.Fatal(err)
		}
		go srv.Start()
		t.Cleanup(srv.Shutdown)
		if !srv.ReadyForConnections(10 * time.Second) {
			t.Fatal("server not ready")
		}
		urls = append(urls, srv.ClientURL())
	}
	return urls
}

// TestWithReplicasReplicatesStreamsAndBuckets creates the contract's
// streams and a bucket through WithReplicas(js, 3) on a cluster of three:
// each is held by three servers; a configuration that names its replicas
// keeps them.
func TestWithReplicasReplicatesStreamsAndBuckets(t *testing.T) {
	urls := startCluster(t, 3)
	nc, err := nats.Connect(urls[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	raw, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	js := natsx.WithReplicas(raw, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The cluster elects its JetStream meta leader after the servers meet.
	testenv.WaitFor(t, 30*time.Second, "a JetStream meta leader", func() bool {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := raw.AccountInfo(ctx)
		return err == nil
	})
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "ONE", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{contract.StreamCandles: 3, contract.StreamResults: 3, contract.StreamIndicators: 3,
		contract.StreamAlerts: 3, "KV_" + contract.BucketState: 3, "KV_ONE": 1}
	for name, replicas := range want {
		s, err := raw.Stream(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.Replicas != replicas {
			t.Errorf("%s has %d replicas, want %d", name, info.Config.Replicas, replicas)
		}
	}
	if natsx.WithReplicas(raw, 1) != raw {
		t.Error("WithReplicas(js, 1) is not js itself")
	}
}
