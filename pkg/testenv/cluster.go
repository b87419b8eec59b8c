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
	// routeProxies[i][j] carries server i's route to server j
	// (StartPartitionableNATSCluster only).
	routeProxies [][]*Proxy
}

// StartNATSCluster starts a cluster of n embedded NATS servers with
// JetStream on loopback, each with its store in a directory of the test,
// stopped when the test ends, and waits until JetStream has a meta leader.
func StartNATSCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	return startNATSCluster(t, n, false)
}

// StartPartitionableNATSCluster is StartNATSCluster with every route
// between two servers through a Proxy of its own, so that Isolate can cut
// one server off the others as a network partition or a host's death
// would: silently, nothing closed, noticed only when heartbeats stop.
func StartPartitionableNATSCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	return startNATSCluster(t, n, true)
}

// Isolate cuts every route to and from the server named name (a cluster
// from StartPartitionableNATSCluster); its clients stay connected to it.
func (c *Cluster) Isolate(name string) {
	for i, srv := range c.Servers {
		for j, p := range c.routeProxies[i] {
			if p != nil && (srv.Name() == name || c.Servers[j].Name() == name) {
				p.Cut()
			}
		}
	}
}

func startNATSCluster(t testing.TB, n int, proxied bool) *Cluster {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = FreePort(t)
	}
	c := &Cluster{}
	for i := range n {
		var routes []*url.URL
		var proxies []*Proxy
		for j := range n {
			host := fmt.Sprintf("127.0.0.1:%d", ports[j])
			var proxy *Proxy
			if proxied && j != i {
				proxy = StartProxy(t, host)
				host = proxy.Addr()
			}
			proxies = append(proxies, proxy)
			if !proxied || j != i {
				routes = append(routes, &url.URL{Scheme: "nats", Host: host})
			}
		}
		c.routeProxies = append(c.routeProxies, proxies)
		cluster := server.ClusterOpts{Name: "vigil-test", Host: "127.0.0.1", Port: ports[i]}
		if proxied {
			// No route pool (its extra connections would be made to the
			// address a server tells, not through the proxy), no client
			// URLs told, and a route address told to the others that
			// refuses connections: a server that learns of another by
			// gossip before its own route through the proxy is up would
			// otherwise connect to it directly, and Isolate would leave
			// that route up.
			cluster.PoolSize, cluster.NoAdvertise, cluster.Advertise = -1, true, "127.0.0.1:1"
		}
		srv, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
			Cluster: cluster,
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
