package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
)

// TestFailedWriteIsNotOvertaken: the engine computes a batch of candles
// while the previous batch's updates are still being written. When that
// write fails, the updates of the same series in the next batch were
// computed on values Redis does not hold: they must not be written
// either, or the rebuild that follows would take the failed bar for
// written and never store it. A proxy in front of Redis holds the first
// batch's write and the second batch's gap fill (so the second batch is
// computed, with the first one's state, before the first one's write
// fails), then Redis refuses the write; in the end every bar must be
// stored with TA-Lib's values.
func TestFailedWriteIsNotOvertaken(t *testing.T) {
	h := newHarness(t)
	redisUser := "indicators-overlap"
	proxy := startRedisProxy(t, h.redisAs(t, redisUser))
	instance := *h
	instance.redis = proxy.url
	instance.startInstance("solo")
	h.waitMembers(1)
	id := contract.SeriesID{User: "overlap", UserID: 13, ExchangeID: 5, Symbol: "BTC-USD", Timeframe: contract.TF1h}
	h.monitorPositions(id)
	data := candles(t, id, 120, 1)
	h.feed(data[:100]...)
	h.waitUpdate(id, data[99].Start, true)

	// Batch n: bar 100, its write held.
	write := proxy.hold(func(args []string) bool { return strings.EqualFold(args[0], "evalsha") })
	h.feed(data[100])
	write.wait(t, "the write of bar 100")
	// Batch n+1: bar 102, bar 101 stored but not published, so that its
	// gap fill reads Redis, held, while the engine computes it.
	read := proxy.hold(func(args []string) bool {
		return strings.EqualFold(args[0], "zrangebyscore") && len(args) > 1 && args[1] == contract.CandleKey(id)
	})
	if _, err := h.store.WriteCandle(context.Background(), data[101]); err != nil {
		t.Fatal(err)
	}
	h.feed(data[102])
	read.wait(t, "the gap fill of bar 102")

	// Redis refuses batch n's write.
	admin := h.admin(t)
	aclSetUser(t, admin, redisUser, "-evalsha")
	refused := proxy.replied("NOPERM")
	close(write.release)
	select {
	case <-refused:
	case <-time.After(30 * time.Second):
		t.Fatal("the held write was not refused in 30s")
	}
	aclSetUser(t, admin, redisUser, "+evalsha")
	// Batch n+1 is computed on bar 100's values, then sent.
	close(read.release)

	h.feed(data[103:]...)
	h.waitUpdate(id, data[len(data)-1].Start, true)
	h.waitAllAcked()
	for _, name := range positionMonitor {
		h.checkStored(id, name, data)
	}
}

// redisProxy forwards connections to Redis and holds the first command
// matching each rule until the test releases it (with everything the
// client sent after it on that connection).
type redisProxy struct {
	url    string
	target string
	mu     sync.Mutex
	rules  []*holdRule
	// watches are closed when a reply of Redis contains their text.
	watches map[string]chan struct{}
}

// holdRule holds the first command that match accepts.
type holdRule struct {
	match func(args []string) bool
	fired bool
	// held is closed when the command is held, release by the test to
	// forward it.
	held, release chan struct{}
}

// wait waits until the rule holds its command.
func (r *holdRule) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-r.held:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s was not seen in 30s", what)
	}
}

// startRedisProxy listens on a loopback port for the Redis at redisURL and
// returns the proxy, whose url is redisURL with the proxy's address.
func startRedisProxy(t *testing.T, redisURL string) *redisProxy {
	t.Helper()
	u, err := url.Parse(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &redisProxy{target: u.Host, watches: map[string]chan struct{}{}}
	u.Host = ln.Addr().String()
	p.url = u.String()
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(t, client)
		}
	}()
	return p
}

// hold adds a rule holding the next command match accepts.
func (p *redisProxy) hold(match func(args []string) bool) *holdRule {
	r := &holdRule{match: match, held: make(chan struct{}), release: make(chan struct{})}
	p.mu.Lock()
	p.rules = append(p.rules, r)
	p.mu.Unlock()
	return r
}

// replied returns what is closed once a reply of Redis contains text.
func (p *redisProxy) replied(text string) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	ch := make(chan struct{})
	p.watches[text] = ch
	return ch
}

// serve forwards one client connection.
func (p *redisProxy) serve(t *testing.T, client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		t.Errorf("proxy: %v", err)
		return
	}
	defer server.Close()
	go p.replies(client, server)
	in := bufio.NewReader(client)
	for {
		raw, args, err := readCommand(in)
		if err != nil {
			return
		}
		if r := p.match(args); r != nil {
			close(r.held)
			<-r.release
		}
		if _, err := server.Write(raw); err != nil {
			return
		}
	}
}

// match returns the rule that holds a command, marking it fired.
func (p *redisProxy) match(args []string) *holdRule {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.rules {
		if !r.fired && r.match(args) {
			r.fired = true
			return r
		}
	}
	return nil
}

// replies copies Redis's replies to the client and closes the watches
// whose text they contain.
func (p *redisProxy) replies(client, server net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for text, ch := range p.watches {
				if bytes.Contains(buf[:n], []byte(text)) {
					close(ch)
					delete(p.watches, text)
				}
			}
			p.mu.Unlock()
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			client.Close()
			return
		}
	}
}

// readCommand reads one RESP command (an array of bulk strings) and
// returns its bytes and arguments.
func readCommand(r *bufio.Reader) (raw []byte, args []string, err error) {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return nil, nil, err
	}
	raw = append(raw, line...)
	if len(line) < 3 || line[0] != '*' {
		return nil, nil, fmt.Errorf("proxy: not a RESP array: %q", line)
	}
	n, err := strconv.Atoi(string(bytes.TrimSpace(line[1:])))
	if err != nil {
		return nil, nil, err
	}
	for range n {
		head, err := r.ReadBytes('\n')
		if err != nil {
			return nil, nil, err
		}
		raw = append(raw, head...)
		if len(head) < 3 || head[0] != '$' {
			return nil, nil, errors.New("proxy: not a bulk string")
		}
		size, err := strconv.Atoi(string(bytes.TrimSpace(head[1:])))
		if err != nil {
			return nil, nil, err
		}
		body := make([]byte, size+2)
		if _, err := io.ReadFull(r, body); err != nil {
			return nil, nil, err
		}
		raw = append(raw, body...)
		args = append(args, string(body[:size]))
	}
	return raw, args, nil
}
