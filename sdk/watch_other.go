//go:build !windows

package sdk

import (
	"os"
	"time"
)

// watchParent polls the parent process id: when the parent dies the
// plugin is adopted by another process and the id changes.
func watchParent(gone func()) {
	parent := os.Getppid()
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for range t.C {
			if os.Getppid() != parent {
				gone()
				return
			}
		}
	}()
}
