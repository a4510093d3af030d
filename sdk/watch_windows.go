//go:build windows

package sdk

import (
	"os"

	"golang.org/x/sys/windows"
)

// watchParent waits on the parent process's handle: Windows never changes
// a process's recorded parent, so the parent id cannot tell that the host
// died, but the handle is signalled when it exits.
func watchParent(gone func()) {
	h, err := windows.OpenProcess(windows.SYNCHRONIZE, false, uint32(os.Getppid()))
	if err != nil {
		return // cannot watch; the host's own Kill still ends the plugin
	}
	go func() {
		defer windows.CloseHandle(h)
		if ev, err := windows.WaitForSingleObject(h, windows.INFINITE); err == nil && ev == windows.WAIT_OBJECT_0 {
			gone()
		}
	}()
}
