//go:build unix

package runner

import (
	"errors"
	"syscall"
)

// pidAlive reports whether process pid still exists.
func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
