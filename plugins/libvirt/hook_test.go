package libvirt_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The rig's hold hook (daemon_test.go) returns only once its qemu-io
// holds the disk, even when another process had the image open for a
// moment as qemu-io opened it: a reader (qemu-img info, or the probe the
// hook itself once ran) refuses to share writes while it runs, and a
// qemu-io opening the disk then fails and holds nothing. Were the hook to
// return then, the lock VM of the conformance suite would be off and free
// right after its stop, and a check of its lingering lock would fail
// (Restore/LingeringLockIsLocked: "succeeded, want locked").
func TestHoldHookHoldsTheDiskThoughAReaderHadItAMoment(t *testing.T) {
	t.Parallel()
	needLibvirt(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "64M").CombinedOutput()
	require.NoError(t, err, "qemu-img create: %s", out)
	hook := filepath.Join(dir, "hook")
	require.NoError(t, os.WriteFile(hook, []byte(fmt.Sprintf(hookScript, dir)), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "hold"), []byte("dom1 "+disk+" 3000\n"), 0o644))

	// The reader has the image open, read-only as qemu-img info has it,
	// when the hook begins.
	reader := exec.Command("stdbuf", "-oL", "qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512", "-c", "sleep 1000", disk)
	stdout, err := reader.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, reader.Start())
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(line, "read "), "the reader's qemu-io: %q", line)

	begun := time.Now()
	out, err = exec.Command(hook, "dom1", "release", "end", "-").CombinedOutput()
	require.NoError(t, err, "the hook: %s", out)
	took := time.Since(begun)
	out, err = exec.Command("qemu-img", "info", disk).CombinedOutput()
	require.Error(t, err, "the hook returned after %s, and the disk is free: %s", took, out)
	require.Contains(t, string(out), `Failed to get shared "write" lock`)
	require.NoError(t, reader.Wait())
	t.Logf("the hook returned after %s, its qemu-io holding the disk", took)

	// The hold ends by itself.
	deadline := time.Now().Add(30 * time.Second)
	for exec.Command("qemu-img", "info", disk).Run() != nil {
		require.True(t, time.Now().Before(deadline), "the hook's qemu-io still holds the disk after 30s")
		time.Sleep(50 * time.Millisecond)
	}
}
