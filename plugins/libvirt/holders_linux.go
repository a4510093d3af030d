//go:build linux

package libvirt

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// QEMU's image locks are open-file-description locks on single bytes of
// the image, from lockBase for the permissions a user holds to lockEnd for
// those it refuses to share (QEMU's block/file-posix.c). qemu-system,
// qemu-img, qemu-io and qemu-nbd all take them.
const (
	lockBase = 100
	lockEnd  = 300
)

// imageLocked reports whether any process holds QEMU's locks on the image
// at path. It only tests the locks (F_OFD_GETLK), taking none, so it never
// makes a holder fail. A path this process cannot open is not locked as
// far as it can tell.
func imageLocked(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: lockBase, Len: lockEnd - lockBase}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return false, fmt.Errorf("probe the image locks of %s: %w", path, err)
	}
	return lk.Type != unix.F_UNLCK, nil
}

// process is a local process, for messages and for the emergency stop.
type process struct {
	pid  int
	comm string
	// vm says it is a QEMU system emulator run for the domain asked about
	// (its command line carries the domain's UUID).
	vm bool
}

func (p process) String() string { return fmt.Sprintf("%s (pid %d)", p.comm, p.pid) }

// scan lists the local processes that have one of paths open, or that are
// QEMU emulators of the domain uuid, as far as /proc lets this process
// see: libvirtd runs QEMU on this host, so the driver sees it too.
func scan(uuid string, paths []string) []process {
	var out []process
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil || pid == os.Getpid() {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
		p := process{pid: pid, comm: strings.TrimSpace(string(comm))}
		if uuid != "" && strings.HasPrefix(p.comm, "qemu-system") {
			if cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil && ownsUUID(cmdline, uuid) {
				p.vm = true
				out = append(out, p)
				continue
			}
		}
		if len(paths) > 0 && opens(dir, paths) {
			out = append(out, p)
		}
	}
	return out
}

// ownsUUID reports whether a QEMU command line (NUL-separated) gives the
// machine the UUID, as libvirt's "-uuid UUID" does.
func ownsUUID(cmdline []byte, uuid string) bool {
	args := bytes.Split(cmdline, []byte{0})
	for i := 0; i+1 < len(args); i++ {
		if string(args[i]) == "-uuid" && strings.EqualFold(string(args[i+1]), uuid) {
			return true
		}
	}
	return false
}

// opens reports whether the process of /proc directory dir has one of
// paths open.
func opens(dir string, paths []string) bool {
	fds, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return false
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
		if err != nil {
			continue
		}
		for _, p := range paths {
			if target == p {
				return true
			}
		}
	}
	return false
}

// kill sends SIGKILL to pid; a process already gone is not an error.
func kill(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}
