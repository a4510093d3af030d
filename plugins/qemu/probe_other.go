//go:build !linux

package qemu

import (
	"errors"
	"syscall"
)

// The driver relies on Linux's lock probes (F_OFD_GETLK) and /proc; it
// builds elsewhere so that the module does, and refuses to configure.

var errLinuxOnly = errors.New("the QEMU driver runs on Linux only")

func pidfileHolder(string) (int, bool, error) { return 0, false, errLinuxOnly }
func diskLocked(string) (bool, error)         { return false, errLinuxOnly }

type holder struct {
	pid  int
	comm string
}

func (h holder) String() string      { return h.comm }
func (h holder) isVMProcess() bool   { return false }
func holders(string) []holder        { return nil }
func kill(int) error                 { return errLinuxOnly }
func detached() *syscall.SysProcAttr { return nil }
func supported() error               { return errLinuxOnly }
