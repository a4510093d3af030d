//go:build unix

package host

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// go-plugin makes a directory for each plugin's socket and removes it when
// the plugin is stopped; a host killed with SIGKILL (a `sandbox serve`
// the OOM killer chose) cannot, and the directory stays in the temp dir
// for good. So a host has go-plugin make them in a directory of its own,
// PID-RANDOM in sandbox-UID of the temp dir (one per host: a process may
// run several; short names: a socket's path must stay under 108 bytes),
// removes it when it closes, and removes those of processes that died
// without closing their hosts whenever it makes its own.

// socketParent is the per-user directory the hosts' socket directories
// live in; it must be the user's own and private, or it is not used.
func socketParent() (string, error) {
	parent := filepath.Join(os.TempDir(), fmt.Sprintf("sandbox-%d", os.Getuid()))
	if err := os.Mkdir(parent, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	fi, err := os.Lstat(parent)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm() != 0o700 {
		return "", fmt.Errorf("%s is not a private directory of this user", parent)
	}
	return parent, nil
}

// makeSocketDir makes this host's socket directory, after removing those
// of hosts that are gone.
func makeSocketDir() (string, error) {
	parent, err := socketParent()
	if err != nil {
		return "", err
	}
	sweepSocketDirs(parent)
	return os.MkdirTemp(parent, strconv.Itoa(os.Getpid())+"-")
}

// sweepSocketDirs removes the socket directories of hosts that no longer
// run.
func sweepSocketDirs(parent string) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		owner, _, ok := strings.Cut(e.Name(), "-")
		pid, err := strconv.Atoi(owner)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() || processExists(pid) {
			continue
		}
		_ = os.RemoveAll(filepath.Join(parent, e.Name()))
	}
}

// processExists reports whether a process pid exists (perhaps another
// user's: then it is not ours to judge, and it counts as alive).
func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
