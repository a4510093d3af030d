package fresh

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAReaderNeverGetsAReadThatBeganBeforeIt(t *testing.T) {
	var r Reader[int64]
	var reads atomic.Int64
	release := make(chan struct{})
	read := func(context.Context) (int64, error) {
		n := reads.Add(1)
		if n == 1 {
			<-release // the first read is slow
		}
		return time.Now().UnixNano(), nil
	}
	first := make(chan int64)
	go func() {
		v, _ := r.Read(context.Background(), read)
		first <- v
	}()
	for reads.Load() == 0 {
		time.Sleep(time.Millisecond) // waiting for the goroutine above to start its read
	}
	// Ten readers arrive while the first read runs: they share one later read.
	asked := time.Now().UnixNano()
	var wg sync.WaitGroup
	vals := make([]int64, 10)
	for i := range vals {
		wg.Go(func() {
			v, err := r.Read(context.Background(), read)
			assert.NoError(t, err)
			vals[i] = v
		})
	}
	waitQueued(t, &r, 10)
	close(release)
	wg.Wait()
	<-first
	for _, v := range vals {
		assert.Greater(t, v, asked, "a waiting reader got a value read after it asked")
		assert.Equal(t, vals[0], v, "the waiters shared one read")
	}
	assert.Equal(t, int64(2), reads.Load())
}

func TestAReaderThatLeavesDoesNotFailTheOthers(t *testing.T) {
	var r Reader[string]
	release := make(chan struct{})
	started := make(chan struct{})
	var once sync.Once
	read := func(ctx context.Context) (string, error) {
		once.Do(func() { close(started) })
		select {
		case <-release:
			return "ok", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	go func() { _, _ = r.Read(context.Background(), read) }()
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	leaver := make(chan error, 1)
	go func() {
		_, err := r.Read(ctx, read) // supplies the next read, then leaves
		leaver <- err
	}()
	waitQueued(t, &r, 1)
	stayer := make(chan string, 1)
	go func() {
		v, err := r.Read(context.Background(), read)
		assert.NoError(t, err)
		stayer <- v
	}()
	waitQueued(t, &r, 2)
	cancel()
	require.ErrorIs(t, <-leaver, context.Canceled)
	close(release)
	assert.Equal(t, "ok", <-stayer)
}

// waitQueued waits until n readers wait for the next read.
func waitQueued[T any](t *testing.T, r *Reader[T], n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		got := 0
		if r.next != nil {
			got = r.next.waiters
		}
		r.mu.Unlock()
		if got >= n {
			return
		}
		require.True(t, time.Now().Before(deadline), "%d readers queued, want %d", got, n)
		time.Sleep(time.Millisecond)
	}
}
