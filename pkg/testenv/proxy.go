package testenv

import (
	"net"
	"net/url"
	"sync"
	"testing"
)

// Proxy is a TCP proxy on a loopback port in front of a server, for tests
// that cut one client off the network: Cut makes every connection through
// it silent (bytes are dropped both ways, nothing is closed, as in a
// network partition), Restore closes those connections and forwards again,
// so clients reconnect. Hold delays every byte instead (a slow or
// partitioned network that delivers late): Release forwards what was
// held, in order, and goes on forwarding.
type Proxy struct {
	target string
	ln     net.Listener

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	// held is closed by Release while Hold is in force; heldBytes are the
	// bytes read and not yet forwarded meanwhile.
	held      chan struct{}
	heldBytes []byte
}

// StartProxy starts a proxy to target (host:port), stopped when the test
// ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: proxy listen: %v", err)
	}
	p := &Proxy{target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	go p.accept()
	t.Cleanup(p.stop)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is the proxy's address as a NATS URL; RedisURL takes a Redis URL
// to the target and returns it through the proxy.
func (p *Proxy) URL() string { return "nats://" + p.Addr() }

// RedisURL is redisURL (whose host is the proxy's target) through the
// proxy: the same URL with the proxy's address as host.
func (p *Proxy) RedisURL(redisURL string) string {
	u, err := url.Parse(redisURL)
	if err != nil {
		return redisURL
	}
	u.Host = p.Addr()
	return u.String()
}

// Cut drops every byte through the proxy from now on, on the connections
// open and on new ones, without closing any.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
}

// Restore closes every connection through the proxy (their streams lost
// bytes while cut) and forwards new ones again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// Hold keeps every byte read through the proxy from now on, both ways,
// without forwarding it or closing anything, until Release.
func (p *Proxy) Hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held == nil {
		p.held = make(chan struct{})
	}
}

// Held is a copy of the bytes Hold has kept so far (both ways).
func (p *Proxy) Held() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]byte(nil), p.heldBytes...)
}

// Release forwards the bytes kept since Hold, each connection's in order,
// and forwards again.
func (p *Proxy) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held != nil {
		close(p.held)
		p.held, p.heldBytes = nil, nil
	}
}

// hold returns, while Hold is in force, a channel closed by Release,
// after counting b as held.
func (p *Proxy) hold(b []byte) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held != nil {
		p.heldBytes = append(p.heldBytes, b...)
	}
	return p.held
}

func (p *Proxy) isCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut
}

func (p *Proxy) track(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
}

func (p *Proxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.track(client, server)
		go p.pipe(client, server)
		go p.pipe(server, client)
	}
}

// pipe copies src to dst, dropping what it reads while the proxy is cut
// and keeping it while it is held.
func (p *Proxy) pipe(src, dst net.Conn) {
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if held := p.hold(buf[:n]); held != nil {
				<-held
			}
		}
		if n > 0 && !p.isCut() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF, or the connection was closed by Restore
		}
	}
}

func (p *Proxy) stop() {
	p.Release()
	p.ln.Close()
	p.Restore()
}
