package statedir_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/statedir"
)

// Launched with envHolder set, the test binary takes a lease and holds it
// until killed: a real other process holding a real lock.
const (
	envHolder    = "STATEDIR_TEST_HOLD"
	envHolderKey = "STATEDIR_TEST_HOLD_KEY"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(envHolder); dir != "" {
		d, err := statedir.Open(dir)
		if err != nil {
			panic(err)
		}
		key := os.Getenv(envHolderKey)
		if key == "" {
			key = "fake/vm1"
		}
		if _, err := d.Leases().Acquire(context.Background(), key); err != nil {
			panic(err)
		}
		fmt.Println("held")
		select {}
	}
	os.Exit(m.Run())
}

// holdIn starts another process that takes key's lease in dir and holds it
// until the test ends or kills it.
func holdIn(t *testing.T, dir, key string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	holder := exec.Command(exe)
	holder.Env = append(os.Environ(), envHolder+"="+dir, envHolderKey+"="+key)
	out, err := holder.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, holder.Start())
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "held\n", line)
	return holder
}

// A wait for a lease another process holds ends at its deadline with the
// deadline's error, and a wait under way when the holder dies takes the
// lease at once rather than at its deadline.
func TestLeaseHeldByAnotherProcessBlocksUntilThatProcessDies(t *testing.T) {
	dir := t.TempDir()
	holder := holdIn(t, dir, "fake/vm1")

	d, err := statedir.Open(dir)
	require.NoError(t, err)
	begun := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = d.Leases().Acquire(ctx, "fake/vm1")
	took := time.Since(begun)
	require.Error(t, err, "the other process holds the VM")
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.GreaterOrEqual(t, took, 200*time.Millisecond, "it waited until its deadline")
	assert.Less(t, took, 5*time.Second, "and no longer")

	release, err := d.Leases().Acquire(context.Background(), "fake/vm2")
	require.NoError(t, err, "other VMs are free")
	release()

	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	got := make(chan error, 1)
	go func() {
		release, err := d.Leases().Acquire(ctx2, "fake/vm1")
		if err == nil {
			release()
		}
		got <- err
	}()
	time.Sleep(100 * time.Millisecond) // the wait is under way
	require.NoError(t, holder.Process.Kill())
	_ = holder.Wait()
	killed := time.Now()
	select {
	case err := <-got:
		require.NoError(t, err, "a dead holder's lease is free: the kernel dropped its lock")
		assert.Less(t, time.Since(killed), 20*time.Second, "taken once the holder died, not at the deadline")
	case <-time.After(40 * time.Second):
		t.Fatal("the lease of a dead holder was not taken within 40s of its death")
	}
}

func TestLeasesSerializeGoroutinesOfOneProcess(t *testing.T) {
	d, err := statedir.Open(t.TempDir())
	require.NoError(t, err)
	var mu sync.Mutex
	inside, most := 0, 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, err := d.Leases().Acquire(context.Background(), "p/vm")
			if !assert.NoError(t, err) {
				return
			}
			mu.Lock()
			inside++
			most = max(most, inside)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond) // hold the lease a moment so overlaps would show
			mu.Lock()
			inside--
			mu.Unlock()
			release()
		}()
	}
	wg.Wait()
	assert.Equal(t, 1, most)
}

func TestQuarantineIsSharedThroughTheDirectory(t *testing.T) {
	dir := t.TempDir()
	a, err := statedir.Open(dir)
	require.NoError(t, err)
	b, err := statedir.Open(dir)
	require.NoError(t, err)
	ctx := context.Background()

	require.NoError(t, a.Quarantine().Mark(ctx, "fake/vm1", "restore failed"))
	e, ok, err := b.Quarantine().Get(ctx, "fake/vm1")
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, "restore failed", e.Reason)
	since := e.Since

	require.NoError(t, b.Quarantine().Mark(ctx, "fake/vm1", "restore failed again"))
	e, _, _ = a.Quarantine().Get(ctx, "fake/vm1")
	assert.Equal(t, since, e.Since, "the first time is kept")
	assert.Equal(t, "restore failed again", e.Reason)

	require.NoError(t, a.Quarantine().Clear(ctx, "fake/vm1"))
	_, ok, err = b.Quarantine().Get(ctx, "fake/vm1")
	require.NoError(t, err)
	assert.False(t, ok)
	require.NoError(t, a.Quarantine().Clear(ctx, "fake/never"), "clearing a VM in service is a no-op")
}

func TestConcurrentMarksLoseNothing(t *testing.T) {
	d, err := statedir.Open(t.TempDir())
	require.NoError(t, err)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			assert.NoError(t, d.Quarantine().Mark(context.Background(), fmt.Sprintf("p/vm%d", i), "x"))
		}()
	}
	wg.Wait()
	all, err := d.List()
	require.NoError(t, err)
	assert.Len(t, all, 20)
}

func TestDamagedQuarantineFileSaysWhatToDo(t *testing.T) {
	dir := t.TempDir()
	d, err := statedir.Open(dir)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "quarantine.json"), []byte("{not json"), 0o600))
	_, _, err = d.Quarantine().Get(context.Background(), "p/vm")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "quarantine.json is damaged")
	assert.Contains(t, err.Error(), "delete it")
}

func TestUnwritableStateDirIsAClearError(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	_, err := statedir.Open(filepath.Join(file, "state"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "state_dir")
}

func TestTryLockIsHeldByOneHandleAtATime(t *testing.T) {
	dir := t.TempDir()
	a, err := statedir.Open(dir)
	require.NoError(t, err)
	b, err := statedir.Open(dir)
	require.NoError(t, err)
	release, err := a.TryLock("serve.lock")
	require.NoError(t, err)
	_, err = b.TryLock("serve.lock")
	assert.ErrorIs(t, err, statedir.ErrLocked)
	release()
	release, err = b.TryLock("serve.lock")
	require.NoError(t, err, "free once released")
	release()
}
