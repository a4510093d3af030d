package pgtest

import (
	"context"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/sandboxhq/sandbox/sdk/wait"
)

// Proxy stands between a test's code and PostgreSQL, so that the test can
// take the database away (every connection cut, new ones refused) and give
// it back, as a PostgreSQL restart or a network outage would.
type Proxy struct {
	t      testing.TB
	target string
	addr   string
	// URL is the database's URL through the proxy.
	URL string

	mu    sync.Mutex
	ln    net.Listener
	conns []net.Conn
}

// NewProxy starts a proxy to the database at dbURL, on this machine's
// loopback, until the test ends.
func NewProxy(t testing.TB, dbURL string) *Proxy {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	p := &Proxy{t: t, target: u.Host}
	p.listen("127.0.0.1:0")
	u.Host = p.addr
	p.URL = u.String()
	t.Cleanup(p.close)
	return p
}

func (p *Proxy) listen(addr string) {
	// The port just closed may take a moment to be free again.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var ln net.Listener
	_, err := wait.Retry(ctx, wait.Policy{Initial: 20 * time.Millisecond}, nil, func(context.Context) error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		p.t.Fatalf("pgtest: proxy: %v", err)
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
}

// Down cuts every connection and refuses new ones for d, then lets them
// through again.
func (p *Proxy) Down(d time.Duration) {
	p.close()
	time.Sleep(d)
	p.listen(p.addr)
}

func (p *Proxy) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}
