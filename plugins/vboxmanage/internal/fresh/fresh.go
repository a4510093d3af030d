// Package fresh shares one read among concurrent readers without ever
// handing a reader something older than its own request: a reader joins a
// read that starts after it asked, never one already under way. Each
// reader's answer is therefore as fresh as if it had read alone, and N
// readers arriving together cost at most two reads instead of N.
//
// The VirtualBox driver reads every VM's state from one listing of all
// VMs; with many VMs in use at once, their status polls share listings
// through a Reader instead of each starting its own.
package fresh

import (
	"context"
	"sync"
)

// Reader coalesces reads of one T. The zero value is ready to use.
type Reader[T any] struct {
	mu      sync.Mutex
	running bool
	// next gathers the readers that arrived while a read ran; it starts
	// when that read ends.
	next *call[T]
}

type call[T any] struct {
	read func(context.Context) (T, error)
	ctx  context.Context
	done chan struct{}
	val  T
	err  error
	// waiters counts the readers that joined the call.
	waiters int
}

// Read returns the result of a read that began after Read was called. If
// none is under way it reads at once with read and ctx; otherwise it waits
// for the read after the current one, which the first reader to wait for
// it supplies (its read and its ctx, detached from its cancellation so
// that a reader who leaves does not fail the others). It returns early
// with ctx's error if ctx ends first.
func (r *Reader[T]) Read(ctx context.Context, read func(context.Context) (T, error)) (T, error) {
	r.mu.Lock()
	if !r.running {
		r.running = true
		r.mu.Unlock()
		c := &call[T]{read: read, ctx: ctx, done: make(chan struct{})}
		r.run(c)
		return c.val, c.err
	}
	if r.next == nil {
		r.next = &call[T]{read: read, ctx: context.WithoutCancel(ctx), done: make(chan struct{})}
	}
	c := r.next
	c.waiters++
	r.mu.Unlock()
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// run performs c, then the read that gathered waiters meanwhile, if any,
// in the background.
func (r *Reader[T]) run(c *call[T]) {
	c.val, c.err = c.read(c.ctx)
	close(c.done)
	r.mu.Lock()
	next := r.next
	r.next = nil
	r.running = next != nil
	r.mu.Unlock()
	if next != nil {
		go r.run(next)
	}
}
