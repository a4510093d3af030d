//go:build !unix

package plugintest

import "os"

// Alive reports whether a process with this id exists.
func Alive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	_ = p.Release()
	return true
}

// Gone reports whether the process has exited.
func Gone(pid int) bool { return !Alive(pid) }
