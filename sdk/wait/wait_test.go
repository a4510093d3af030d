package wait_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/sdk/wait"
)

var (
	errBusy = errors.New("the session is locked by another process")
	errGone = errors.New("no such VM")
	quick   = wait.Policy{Initial: time.Millisecond, Max: 5 * time.Millisecond, Factor: 2, Jitter: 0.3}
)

func TestRetryUntilSuccess(t *testing.T) {
	n := 0
	calls, err := wait.Retry(context.Background(), quick, nil, func(context.Context) error {
		if n++; n < 4 {
			return errBusy
		}
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, 4, calls)
}

func TestRetryStopsAtAnErrorItMayNotRetry(t *testing.T) {
	calls, err := wait.Retry(context.Background(), quick, func(err error) bool { return errors.Is(err, errBusy) },
		func(context.Context) error { return errGone })
	assert.ErrorIs(t, err, errGone)
	assert.Equal(t, 1, calls)
}

// The deadline ends the retries with the call's own last error, after one
// last call just before it, even when the policy's next wait would end far
// past it.
func TestRetryReturnsTheLastErrorAndTriesJustBeforeTheDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var last time.Time
	calls, err := wait.Retry(ctx, wait.Policy{Initial: 100 * time.Millisecond, Factor: 10}, nil, func(context.Context) error {
		last = time.Now()
		return errBusy
	})
	assert.ErrorIs(t, err, errBusy, "the hypervisor's last word, not the context's")
	assert.NotErrorIs(t, err, context.DeadlineExceeded)
	assert.GreaterOrEqual(t, calls, 3, "the first call, one after 100ms, and the last one before the deadline")
	assert.True(t, last.After(deadline.Add(-150*time.Millisecond)), "the last call came %s before the deadline", deadline.Sub(last))
}

// The last call, cut by the deadline, answers the context's error: the
// hypervisor's word before it is what the caller gets.
func TestRetryPrefersTheHypervisorsWordToACutCall(t *testing.T) {
	calls := 0
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := wait.Retry(ctx, wait.Policy{Initial: time.Hour}, nil, func(ctx context.Context) error {
		if calls++; calls == 1 {
			return errBusy
		}
		<-ctx.Done()
		return fmt.Errorf("status: %w", ctx.Err())
	})
	assert.Equal(t, 2, calls)
	assert.ErrorIs(t, err, errBusy)
}

func TestRetryCallsOnceWithAnEndedContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls, err := wait.Retry(ctx, quick, nil, func(ctx context.Context) error { return errBusy })
	assert.Equal(t, 1, calls)
	assert.ErrorIs(t, err, errBusy)
}

func TestUntil(t *testing.T) {
	n := 0
	require.NoError(t, wait.Until(context.Background(), quick, func(context.Context) (bool, error) {
		n++
		return n == 5, nil
	}))
	assert.Equal(t, 5, n)

	err := wait.Until(context.Background(), quick, func(context.Context) (bool, error) { return false, errGone })
	assert.ErrorIs(t, err, errGone)
}

func TestUntilEndsWithTheContextAfterALastLook(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var last time.Time
	err := wait.Until(ctx, wait.Policy{Initial: 150 * time.Millisecond, Factor: 4}, func(context.Context) (bool, error) {
		last = time.Now()
		return false, nil
	})
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.True(t, last.After(deadline.Add(-45*time.Millisecond)), "the last look came %s before the deadline", deadline.Sub(last))

	// A condition that holds at the last look is a success.
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	looks := 0
	err = wait.Until(ctx, wait.Policy{Initial: time.Hour}, func(context.Context) (bool, error) {
		looks++
		return looks == 2, nil
	})
	assert.NoError(t, err)
}

func TestSleep(t *testing.T) {
	require.NoError(t, wait.Sleep(context.Background(), time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, wait.Sleep(ctx, time.Hour), context.DeadlineExceeded)
}

func TestPolicyGrowsToItsCap(t *testing.T) {
	b := wait.Policy{Initial: 10 * time.Millisecond, Max: 40 * time.Millisecond, Factor: 2}.Backoff()
	got := []time.Duration{b.Next(), b.Next(), b.Next(), b.Next()}
	assert.Equal(t, []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 40 * time.Millisecond}, got)

	b = wait.Policy{Initial: 100 * time.Millisecond, Factor: 1, Jitter: 0.5}.Backoff()
	for range 100 {
		d := b.Next()
		require.True(t, d >= 50*time.Millisecond && d <= 150*time.Millisecond, "%s", d)
	}
}

func TestKeyedLockGivesUpWithItsContext(t *testing.T) {
	var k wait.Keyed[string]
	unlock, err := k.Lock(context.Background(), "vm1")
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = k.Lock(ctx, "vm1")
	assert.ErrorIs(t, err, context.DeadlineExceeded)

	// Another key does not wait for the first.
	other, err := k.Lock(context.Background(), "vm2")
	require.NoError(t, err)
	other()

	_, ok := k.TryLock("vm1")
	assert.False(t, ok)
	unlock()
	again, ok := k.TryLock("vm1")
	require.True(t, ok)
	again()

	ended, cancel2 := context.WithCancel(context.Background())
	cancel2()
	_, err = k.Lock(ended, "free")
	assert.ErrorIs(t, err, context.Canceled, "an ended context never takes a lock")
}

func TestKeyedExcludes(t *testing.T) {
	var (
		k       wait.Keyed[int]
		inside  [2]atomic.Int32
		overlap atomic.Bool
		wg      sync.WaitGroup
	)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				unlock, err := k.Lock(context.Background(), i%2)
				if err != nil {
					t.Error(err)
					return
				}
				if inside[i%2].Add(1) > 1 {
					overlap.Store(true)
				}
				inside[i%2].Add(-1)
				unlock()
			}
		}()
	}
	wg.Wait()
	assert.False(t, overlap.Load(), "more than one holder of a key at once")
}

// On looks again at every announced change and at the time it was told,
// and at nothing else.
func TestOn(t *testing.T) {
	changed := make(chan struct{})
	var mu sync.Mutex
	value := 0
	go func() {
		for range 3 {
			mu.Lock()
			value++
			old := changed
			changed = make(chan struct{})
			mu.Unlock()
			close(old)
			time.Sleep(time.Millisecond)
		}
	}()
	looks := 0
	err := wait.On(context.Background(), func(context.Context) (bool, wait.Next, error) {
		mu.Lock()
		defer mu.Unlock()
		looks++
		return value == 3, wait.Next{Wake: changed}, nil
	})
	require.NoError(t, err)
	assert.LessOrEqual(t, looks, 4, "one look at the start and one a change")

	start := time.Now()
	looks = 0
	err = wait.On(context.Background(), func(context.Context) (bool, wait.Next, error) {
		looks++
		return looks == 2, wait.Next{At: start.Add(20 * time.Millisecond)}, nil
	})
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond, "the second look waited for its time")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err = wait.On(ctx, func(context.Context) (bool, wait.Next, error) { return false, wait.Next{}, nil })
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	err = wait.On(context.Background(), func(context.Context) (bool, wait.Next, error) { return false, wait.Next{}, errGone })
	assert.ErrorIs(t, err, errGone)
}
