package testenv

import (
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// Cluster is a NATS cluster with JetStream started by StartNATSCluster.
type Cluster struct {
	// Servers are the cluster's servers, named n0, n1, ...
	Servers []*server.Server
}

// StartNATSCluster starts a cluster of n embedded NATS servers with
// JetStream on loopback, each with its store in a directory of the test,
// stopped when the test ends, and waits until JetStream has a meta leader.
func StartNATSCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	ports := make([]int, n)
	var routes []*url.URL
	for i := range ports {
		ports[i] = FreePort(t)
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", ports[i])})
	}
	c := &Cluster{}
	for i := range n {
		srv, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "vigil-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:  routes,
		})
		if err != nil {
			t.Fatalf("testenv: cluster server %d: %v", i, err)
		}
		go srv.Start()
		t.Cleanup(func() {
			srv.Shutdown()
			srv.WaitForShutdown()
		})
		if !srv.ReadyForConnections(startTimeout) {
			t.Fatalf("testenv: cluster server %d not ready", i)
		}
		c.Servers = append(c.Servers, srv)
	}
	WaitFor(t, startTimeout, "a JetStream meta leader", func() bool {
		for _, srv := range c.Servers {
			if srv.JetStreamIsLeader() {
				return true
			}
		}
		return false
	})
	return c
}

// URL lists every server's client URL, comma-separated, as nats.Connect
// takes them.
func (c *Cluster) URL() string {
	urls := make([]string, len(c.Servers))
	for i, srv := range c.Servers {
		urls[i] = srv.ClientURL()
	}
	return strings.Join(urls, ",")
}

// Server is the running server named name, or nil.
func (c *Cluster) Server(name string) *server.Server {
	for _, srv := range c.Servers {
		if srv.Name() == name && srv.Running() {
			return srv
		}
	}
	return nil
}
