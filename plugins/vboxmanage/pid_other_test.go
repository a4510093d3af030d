//go:build !unix

package vboxmanage_test

import "os"

// pidAlive reports whether process pid still exists.
func pidAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	_ = p.Release()
	return true
}
