package qcow2_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/plugins/qemu/internal/qcow2"
)

// qemu-img writes the images; the reader must see what `qemu-img snapshot
// -l` lists. Disk-only snapshots (qemu-img snapshot -c) have no VM state.
func TestSnapshotsListsWhatQemuImgCreated(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed (apt-get install qemu-utils): skipped")
	}
	img := filepath.Join(t.TempDir(), "d.qcow2")
	run := func(args ...string) {
		out, err := exec.Command("qemu-img", args...).CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
	run("create", "-q", "-f", "qcow2", img, "16M")
	snaps, err := qcow2.Snapshots(img)
	require.NoError(t, err)
	assert.Empty(t, snaps)
	run("snapshot", "-c", "first", img)
	run("snapshot", "-c", "a-much-longer-name-to-test-padding", img)
	snaps, err = qcow2.Snapshots(img)
	require.NoError(t, err)
	require.Len(t, snaps, 2)
	assert.Equal(t, "first", snaps[0].Name)
	assert.Equal(t, "a-much-longer-name-to-test-padding", snaps[1].Name)
	assert.Zero(t, snaps[1].VMStateSize)
	s, ok := qcow2.Find(snaps, "first")
	assert.True(t, ok)
	assert.Equal(t, "1", s.ID)
	_, ok = qcow2.Find(snaps, "missing")
	assert.False(t, ok)
}

func TestSnapshotsRefusesWhatIsNotQcow2(t *testing.T) {
	f := filepath.Join(t.TempDir(), "raw.img")
	require.NoError(t, os.WriteFile(f, make([]byte, 4096), 0o644))
	_, err := qcow2.Snapshots(f)
	assert.ErrorContains(t, err, "not a qcow2 image")
	_, err = qcow2.Snapshots(filepath.Join(t.TempDir(), "missing"))
	assert.ErrorIs(t, err, os.ErrNotExist)
}
