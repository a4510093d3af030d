package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// pidfileHolder returns the process holding the lock QEMU keeps on its
// -pidfile for as long as it lives: 0 when none does. stale reports a pid
// file left without its lock, which a QEMU that was killed leaves behind
// (one that exits normally removes it). Unlike the pid written in the
// file, the lock cannot outlive the process or name a recycled pid.
func pidfileHolder(path string) (pid int, stale bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil {
		return 0, false, fmt.Errorf("probe the lock of %s: %w", path, err)
	}
	if lk.Type == unix.F_UNLCK {
		return 0, true, nil
	}
	return int(lk.Pid), false, nil
}

// QEMU's image locks are open-file-description locks on single bytes:
// from lockBase for the permissions a user holds to sharedBase+8 for those
// it refuses to share (block/file-posix.c).
const (
	lockBase = 100
	lockEnd  = 300
)

// diskLocked reports whether any process holds QEMU's locks on the image
// at path: a QEMU process, qemu-img or qemu-nbd with it open. It only
// tests the locks (F_OFD_GETLK), taking none, so it never makes one of
// them fail.
func diskLocked(path string) (bool, error) {
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

// holder is a process that has a file open.
type holder struct {
	pid  int
	comm string
}

func (h holder) String() string { return fmt.Sprintf("%s (pid %d)", h.comm, h.pid) }

// isVMProcess reports whether h is a QEMU system emulator, whose death
// only ends a VM.
func (h holder) isVMProcess() bool { return strings.HasPrefix(h.comm, "qemu-system") }

// holders lists the processes with path open, as far as /proc lets this
// process see.
func holders(path string) []holder {
	var out []holder
	dirs, _ := filepath.Glob("/proc/[0-9]*/fd")
	for _, dir := range dirs {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if target, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && target == path {
				comm, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
				out = append(out, holder{pid: pid, comm: strings.TrimSpace(string(comm))})
				break
			}
		}
	}
	return out
}

// kill sends SIGKILL to pid; a process already gone is not an error.
func kill(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// detached makes a launched QEMU the leader of a session of its own, so
// that it outlives the plugin (VMs live on between sandbox commands) and a
// Ctrl-C meant for sandbox does not reach it.
func detached() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }

// supported is nil where the driver can run.
func supported() error { return nil }
