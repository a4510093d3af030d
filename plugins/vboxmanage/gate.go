package vboxmanage

import (
	"context"
	"sync"
)

// gates serializes the driver's own calls per VM. VBoxManage commands
// that touch a stopped VM lock its session while they run; if two of the
// driver's calls on one VM overlapped (a status poll during a restore, a
// start during a status poll) the driver would be the source of its own
// "already locked" errors.
type gates struct {
	mu sync.Mutex
	m  map[string]*gate
}

func (g *gates) get(vm string) *gate {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil {
		g.m = map[string]*gate{}
	}
	x, ok := g.m[vm]
	if !ok {
		x = &gate{}
		g.m[vm] = x
	}
	return x
}

// gate is a read/write lock whose waits end with ctx. Lifecycle calls hold
// it exclusively; guest operations share it, because they only ever share
// the running VM process's session and cannot collide with one another.
type gate struct {
	mu      sync.Mutex
	readers int
	writer  bool
	wake    chan struct{}
}

// acquire waits for the gate and returns its release.
func (g *gate) acquire(ctx context.Context, exclusive bool) (func(), error) {
	for {
		g.mu.Lock()
		if !g.writer && (!exclusive || g.readers == 0) {
			if exclusive {
				g.writer = true
			} else {
				g.readers++
			}
			g.mu.Unlock()
			var once sync.Once
			return func() { once.Do(func() { g.release(exclusive) }) }, nil
		}
		if g.wake == nil {
			g.wake = make(chan struct{})
		}
		wake := g.wake
		g.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (g *gate) release(exclusive bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if exclusive {
		g.writer = false
	} else {
		g.readers--
	}
	if g.wake != nil {
		close(g.wake)
		g.wake = nil
	}
}
