//go:build unix

package plugintest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// cacheDir is the directory executables are built into and the lock that
// keeps two processes from building one at once: the directory this
// module's test processes share, or, outside a module, one of the Cache's
// own with no lock.
func cacheDir() (string, lockFunc, error) {
	mod := moduleFile()
	if mod == "" {
		return ownDir()
	}
	dir := sharedName(mod)
	if err := privateDir(dir); err != nil {
		return "", nil, fmt.Errorf("plugintest: %w", err)
	}
	return dir, lockFile, nil
}

// lockFile is a lockFunc on flock: it creates the file at path.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// privateDir makes dir if it is missing and checks that it is a directory
// (not a link to one) that only this user may write to.
func privateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s %w", dir, errNotPrivate)
	}
	return nil
}

// sharedName is the directory this module's test processes share, named
// after its go.mod and GOFLAGS. The toolchain is not in the name: go build
// relinks an executable a new toolchain makes stale.
func sharedName(mod string) string {
	sum := sha256.Sum256([]byte(mod + "\x00" + os.Getenv("GOFLAGS")))
	return filepath.Join(os.TempDir(), fmt.Sprintf("plugintest-%d-%s", os.Getuid(), hex.EncodeToString(sum[:8])))
}

// moduleFile is the go.mod of the module the working directory is in, or
// empty outside one.
func moduleFile() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		mod := filepath.Join(dir, "go.mod")
		if fi, err := os.Stat(mod); err == nil && fi.Mode().IsRegular() {
			return mod
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// errNotPrivate is a shared build directory that another user could
// write to: the tests would run executables someone else put there.
var errNotPrivate = errors.New("is not a directory of this user's alone; remove it")
