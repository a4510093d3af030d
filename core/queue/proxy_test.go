package queue_test

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// outageProxy stands between the queue and PostgreSQL, so that a test can
// take the database away (every connection cut, new ones refused) and give
// it back, as a PostgreSQL restart or a network outage would.
type outageProxy struct {
	t      *testing.T
	target string
	addr   string
	url    string

	mu    sync.Mutex
	ln    net.Listener
	conns []net.Conn
}

func newOutageProxy(t *testing.T, dbURL string) *outageProxy {
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	p := &outageProxy{t: t, target: u.Host}
	p.listen("127.0.0.1:0")
	u.Host = p.addr
	p.url = u.String()
	t.Cleanup(p.close)
	return p
}

func (p *outageProxy) listen(addr string) {
	var ln net.Listener
	var err error
	for range 50 { // the port just closed may take a moment to be free again
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(p.t, err)
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

// down cuts every connection and refuses new ones for d.
func (p *outageProxy) down(d time.Duration) {
	p.close()
	time.Sleep(d)
	p.listen(p.addr)
}

func (p *outageProxy) close() {
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
