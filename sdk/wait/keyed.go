package wait

import (
	"context"
	"sync"
)

// Keyed is a set of mutexes, one per key (a VM's name), whose Lock gives
// up when its context ends, which sync.Mutex cannot. A key's mutex exists
// while somebody holds or waits for it, so a long-lived Keyed does not grow
// with every key it has seen. The zero value is ready to use; a Keyed must
// not be copied after first use.
type Keyed[K comparable] struct {
	mu sync.Mutex
	m  map[K]*slot
}

// slot is one key's mutex: a channel with room for one holder, and how
// many hold or wait for it.
type slot struct {
	ch   chan struct{}
	refs int
}

// Lock waits until key's mutex is free and takes it, or gives up with
// ctx's error when ctx ends first; a context already ended never takes
// it. The returned function frees it, and must be called once.
func (k *Keyed[K]) Lock(ctx context.Context, key K) (unlock func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := k.ref(key)
	select {
	case s.ch <- struct{}{}:
		return k.unlocker(key, s), nil
	case <-ctx.Done():
		k.unref(key, s)
		return nil, ctx.Err()
	}
}

// TryLock takes key's mutex if it is free, without waiting.
func (k *Keyed[K]) TryLock(key K) (unlock func(), ok bool) {
	s := k.ref(key)
	select {
	case s.ch <- struct{}{}:
		return k.unlocker(key, s), true
	default:
		k.unref(key, s)
		return nil, false
	}
}

func (k *Keyed[K]) unlocker(key K, s *slot) func() {
	return func() {
		<-s.ch
		k.unref(key, s)
	}
}

func (k *Keyed[K]) ref(key K) *slot {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[K]*slot{}
	}
	s, ok := k.m[key]
	if !ok {
		s = &slot{ch: make(chan struct{}, 1)}
		k.m[key] = s
	}
	s.refs++
	return s
}

func (k *Keyed[K]) unref(key K, s *slot) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if s.refs--; s.refs == 0 {
		delete(k.m, key)
	}
}
