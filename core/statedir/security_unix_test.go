//go:build unix

package statedir_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/statedir"
)

// These tests play a hostile local user against the state directory: they
// change the process's umask, file owners and modes, so they run on Unix.

func TestTheStateDirIsPrivateEvenUnderAPermissiveUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "state")
	d, err := statedir.Open(dir)
	require.NoError(t, err)
	release, err := d.Leases().Acquire(context.Background(), "fake/vm1")
	require.NoError(t, err)
	defer release()
	require.NoError(t, d.Quarantine().Mark(context.Background(), "fake/vm1", "x"))
	for _, p := range []string{dir, filepath.Join(dir, "leases")} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), p)
	}
	for _, p := range append(leasePaths(t, dir), filepath.Join(dir, "quarantine.json"), filepath.Join(dir, "quarantine.lock")) {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Zero(t, fi.Mode().Perm()&0o077, "%s is %s", p, fi.Mode())
	}
}

func leasePaths(t *testing.T, dir string) []string {
	var out []string
	for _, n := range leaseFiles(t, dir) {
		out = append(out, filepath.Join(dir, "leases", n))
	}
	return out
}

func TestAStateDirOthersCanWriteIsRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.Chmod(dir, 0o777))
	_, err := statedir.Open(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), dir)
	assert.Contains(t, err.Error(), "writable by")
	assert.Contains(t, err.Error(), "chmod 700")

	require.NoError(t, os.Chmod(dir, 0o700))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "leases"), 0o700))
	require.NoError(t, os.Chmod(filepath.Join(dir, "leases"), 0o770))
	_, err = statedir.Open(dir)
	require.Error(t, err, "the leases directory is checked too")
	assert.Contains(t, err.Error(), "leases")
}

func TestAStateDirAnotherUserOwnsIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	dir := filepath.Join(t.TempDir(), "state")
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.Chown(dir, 65534, 65534))
	_, err := statedir.Open(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "uid 65534")
	assert.Contains(t, err.Error(), "state_dir")
}

// A symlink planted where a lease or lock file goes is never followed: the
// file it points to is neither created nor changed.
func TestSymlinksInTheStateDirAreNotFollowed(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	d, err := statedir.Open(dir)
	require.NoError(t, err)
	release, err := d.Leases().Acquire(context.Background(), "fake/vm1")
	require.NoError(t, err)
	names := leaseFiles(t, dir)
	require.Len(t, names, 1)
	release()

	victim := filepath.Join(t.TempDir(), "victim")
	require.NoError(t, os.Symlink(victim, filepath.Join(dir, "leases", names[0])))
	_, err = d.Leases().Acquire(context.Background(), "fake/vm1")
	require.Error(t, err, "a lease behind a symlink is refused")
	assert.Contains(t, err.Error(), "symlink")
	_, err = os.Lstat(victim)
	assert.ErrorIs(t, err, os.ErrNotExist, "the symlink's target was created")

	inside := filepath.Join(dir, "elsewhere")
	require.NoError(t, os.WriteFile(inside, []byte("keep"), 0o600))
	require.NoError(t, os.Remove(filepath.Join(dir, "leases", names[0])))
	require.NoError(t, os.Symlink(inside, filepath.Join(dir, "leases", names[0])))
	_, err = d.Leases().Acquire(context.Background(), "fake/vm1")
	require.Error(t, err, "even one pointing inside the directory")
	data, err := os.ReadFile(inside)
	require.NoError(t, err)
	assert.Equal(t, "keep", string(data))

	require.NoError(t, os.Symlink(victim, filepath.Join(dir, "quarantine.lock")))
	err = d.Quarantine().Mark(context.Background(), "fake/vm2", "x")
	require.Error(t, err)
	_, err = os.Lstat(victim)
	assert.ErrorIs(t, err, os.ErrNotExist, "the quarantine lock followed a symlink")
}
