//go:build !unix

package vboxsim

import (
	"errors"
	"os"
	"time"
)

// Without flock, an exclusively created marker file serializes
// invocations. The simulator is meant for Unix test hosts; this keeps the
// package building elsewhere.
func lockFileExclusive(f *os.File) error {
	marker := f.Name() + ".held"
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			return m.Close()
		}
		if !errors.Is(err, os.ErrExist) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func unlockFile(f *os.File) { _ = os.Remove(f.Name() + ".held") }

func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	_ = p.Release()
	return true
}
