package statedir_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/statedir"
)

// leaseFiles lists the lease files in dir.
func leaseFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "leases"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") { // a lease file being put back
			names = append(names, e.Name())
		}
	}
	return names
}

// acquireFails asserts that key cannot be taken in dir within d.
func acquireFails(t *testing.T, dir, key string, d time.Duration) {
	t.Helper()
	second, err := statedir.Open(dir)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	release, err := second.Leases().Acquire(ctx, key)
	if err == nil {
		release()
		t.Fatalf("a second holder got %s while the first still holds it", key)
	}
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}

// waitForLeaseFile waits up to d for a lease file to be in dir again and
// reports whether one is.
func waitForLeaseFile(t *testing.T, dir string, d time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	for len(leaseFiles(t, dir)) == 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond) // watching another process's work: nothing to wait on
	}
	return true
}

// A holder whose state directory is deleted under it keeps the VM: a
// second operation started after the deletion waits instead of running
// beside the first.
func TestDeletingTheStateDirWhileALeaseIsHeldLetsNoSecondHolderIn(t *testing.T) {
	dir := t.TempDir()
	holdIn(t, dir, "fake/slowvm")
	require.NoError(t, os.RemoveAll(dir))
	// The next command takes a moment to get to its lease (it launches its
	// plugin first); the holder has put its lease back by then.
	waitForLeaseFile(t, dir, 2*time.Second)
	acquireFails(t, dir, "fake/slowvm", 300*time.Millisecond)
}

func TestDeletingALeaseFileWhileItIsHeldLetsNoSecondHolderIn(t *testing.T) {
	dir := t.TempDir()
	holdIn(t, dir, "fake/slowvm")
	files := leaseFiles(t, dir)
	require.Len(t, files, 1)
	require.NoError(t, os.Remove(filepath.Join(dir, "leases", files[0])))
	waitForLeaseFile(t, dir, 2*time.Second)
	acquireFails(t, dir, "fake/slowvm", 300*time.Millisecond)
}

// Two directory handles in one process lock like two processes do; with
// lease files removed on release, a waiter that locked the removed file
// must notice and take the new one, so that no two ever overlap.
func TestLeasesSerializeAcrossHandlesWhileFilesComeAndGo(t *testing.T) {
	dir := t.TempDir()
	var handles []*statedir.Dir
	for range 3 {
		d, err := statedir.Open(dir)
		require.NoError(t, err)
		handles = append(handles, d)
	}
	var mu sync.Mutex
	inside, most := 0, 0
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				release, err := handles[i%len(handles)].Leases().Acquire(context.Background(), "p/vm")
				if !assert.NoError(t, err) {
					return
				}
				mu.Lock()
				inside++
				most = max(most, inside)
				mu.Unlock()
				time.Sleep(time.Millisecond) // hold a moment so that overlaps would show
				mu.Lock()
				inside--
				mu.Unlock()
				release()
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, 1, most)
	assert.Empty(t, leaseFiles(t, dir), "every lease file is removed with its lease")
}

func TestLeaseFileNamesAreBoundedWhateverTheVMName(t *testing.T) {
	dir := t.TempDir()
	d, err := statedir.Open(dir)
	require.NoError(t, err)
	for _, name := range []string{
		strings.Repeat("虚", 39),                  // 117 bytes of UTF-8
		strings.Repeat("a", 300),                 // longer than any file name may be
		"../../etc/passwd",                       // a path, not a name
		"win10-64-defender",                      // the usual
		"tab\tand\nnewline and space and 100% %", // what percent-escaping made long
	} {
		release, err := d.Leases().Acquire(context.Background(), "vbox/"+name)
		require.NoError(t, err, "%q", name)
		files := leaseFiles(t, dir)
		require.Len(t, files, 1)
		assert.LessOrEqual(t, len(files[0]), 100, "%q", files[0])
		assert.NotContains(t, files[0], "/")
		if name == "win10-64-defender" {
			assert.True(t, strings.HasPrefix(files[0], "vbox_win10-64-defender-"), "readable: %q", files[0])
		}
		release()
	}
	r1, err := d.Leases().Acquire(context.Background(), "vbox/"+strings.Repeat("a", 300))
	require.NoError(t, err)
	defer r1()
	r2, err := d.Leases().Acquire(context.Background(), "vbox/"+strings.Repeat("a", 301))
	require.NoError(t, err, "names sharing a long prefix are different leases")
	defer r2()
}

func TestNoLeaseFileOutlivesItsLease(t *testing.T) {
	dir := t.TempDir()
	d, err := statedir.Open(dir)
	require.NoError(t, err)
	for _, name := range []string{"vm1", "typo1", "typo2", "nosuchvm"} {
		release, err := d.Leases().Acquire(context.Background(), "fake/"+name)
		require.NoError(t, err)
		release()
	}
	assert.Empty(t, leaseFiles(t, dir))
}

func TestALeaseNamesItsHolderAndTheHolderADeadProcessLeft(t *testing.T) {
	dir := t.TempDir()
	holder := holdIn(t, dir, "fake/vm1")
	d, err := statedir.Open(dir)
	require.NoError(t, err)

	info, err := d.Lease("fake/vm1")
	require.NoError(t, err)
	require.NotNil(t, info)
	assert.True(t, info.Live)
	assert.Equal(t, holder.Process.Pid, info.PID)
	assert.Equal(t, "fake/vm1", info.Key)
	assert.Contains(t, info.Command, filepath.Base(holder.Path))
	assert.WithinDuration(t, time.Now(), info.Since, time.Minute)

	tl, ok := d.Leases().(lifecycle.TryLeases)
	require.True(t, ok, "the state directory's leases can be tried without waiting")
	_, _, err = tl.TryAcquire("fake/vm1")
	var held *lifecycle.LeaseHeldError
	require.ErrorAs(t, err, &held)
	require.NotNil(t, held.Holder)
	assert.Equal(t, holder.Process.Pid, held.Holder.PID)
	assert.ErrorIs(t, err, lifecycle.ErrLeaseHeld)

	none, err := d.Lease("fake/vm2")
	require.NoError(t, err)
	assert.Nil(t, none, "nobody holds vm2")

	require.NoError(t, holder.Process.Kill())
	_ = holder.Wait()
	info, err = d.Lease("fake/vm1")
	require.NoError(t, err)
	require.NotNil(t, info, "a holder that died leaves its record")
	assert.False(t, info.Live)
	assert.Equal(t, holder.Process.Pid, info.PID)

	release, left, err := tl.TryAcquire("fake/vm1")
	require.NoError(t, err)
	require.NotNil(t, left, "the record of the holder that died is handed over")
	assert.Equal(t, holder.Process.Pid, left.PID)
	mine, err := d.Lease("fake/vm1")
	require.NoError(t, err)
	require.NotNil(t, mine)
	assert.Equal(t, os.Getpid(), mine.PID)
	assert.True(t, mine.Live)
	release()
	gone, err := d.Lease("fake/vm1")
	require.NoError(t, err)
	assert.Nil(t, gone)
}
