package libvirt

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// conn is the driver's connection to libvirtd, opened on first use and
// opened again after libvirtd went away (a restart, a crash): every call
// goes through it. go-libvirt's calls take no context and may wait as
// long as libvirtd does (its state change lock is waited for 30 s), so
// each runs in a goroutine of its own that the caller leaves at its
// deadline.
type conn struct {
	uri     string
	socket  string
	timeout time.Duration

	mu sync.Mutex
	l  *golibvirt.Libvirt
}

// dialer dials libvirtd's unix socket within a bound.
type dialer struct {
	path    string
	timeout time.Duration
}

var _ socket.Dialer = dialer{}

func (d dialer) Dial() (net.Conn, error) { return net.DialTimeout("unix", d.path, d.timeout) }

// client returns the open connection, opening one if there is none or the
// last one was lost.
func (c *conn) client(ctx context.Context) (*golibvirt.Libvirt, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.l != nil && c.l.IsConnected() {
		return c.l, nil
	}
	c.l = nil
	l := golibvirt.NewWithDialer(dialer{path: c.socket, timeout: c.timeout})
	done := make(chan error, 1)
	go func() { done <- l.ConnectToURI(golibvirt.ConnectURI(c.uri)) }()
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	select {
	case err := <-done:
		if err != nil {
			return nil, err
		}
	case <-cctx.Done():
		// Left to finish alone; a connection it makes after all is closed.
		go func() {
			if <-done == nil {
				_ = l.Disconnect()
			}
		}()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("libvirtd accepted no connection within %s", c.timeout)
	}
	c.l = l
	return l, nil
}

// close ends the connection, if any.
func (c *conn) close() error {
	c.mu.Lock()
	l := c.l
	c.l = nil
	c.mu.Unlock()
	if l == nil || !l.IsConnected() {
		return nil
	}
	return l.Disconnect()
}

// do runs f on the connection and returns its error classified for op and
// vm; it returns at ctx's end even if libvirtd has not answered.
func (c *conn) do(ctx context.Context, op, vm string, f func(l *golibvirt.Libvirt) error) error {
	if err := hypervisor.FromContext(ctx, op, vm); err != nil {
		return err
	}
	l, err := c.client(ctx)
	if err != nil {
		if cerr := hypervisor.FromContext(ctx, op, vm); cerr != nil {
			return cerr
		}
		return &hypervisor.Error{Code: hypervisor.CodeUnavailable, Op: op, VM: vm,
			Message: fmt.Sprintf("cannot reach libvirtd at %s (%s): %v; is libvirtd running?", c.socket, c.uri, err), Err: err}
	}
	done := make(chan error, 1)
	go func() { done <- f(l) }()
	select {
	case err := <-done:
		if err == nil {
			return nil
		}
		if !l.IsConnected() {
			return &hypervisor.Error{Code: hypervisor.CodeUnavailable, Op: op, VM: vm,
				Message: "the connection to libvirtd was lost: " + err.Error(), Err: err}
		}
		return classify(op, vm, err)
	case <-ctx.Done():
		return hypervisor.FromContext(ctx, op, vm)
	}
}
