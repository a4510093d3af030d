//go:build !linux

package libvirt

import (
	"errors"
	"fmt"
)

// On other systems the driver cannot see the processes on the host: it
// reports the locks libvirt reports, and its emergency stop is libvirt's
// destroy.

func imageLocked(string) (bool, error) { return false, nil }

type process struct {
	pid  int
	comm string
	vm   bool
}

func (p process) String() string { return fmt.Sprintf("%s (pid %d)", p.comm, p.pid) }

func scan(string, []string) []process { return nil }

func kill(int) error { return errors.New("not supported on this system") }
