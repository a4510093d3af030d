//go:build !windows

package sdk

import (
	"context"
	"os"
	"time"

	"github.com/sandboxhq/sandbox/sdk/wait"
)

// watchParent polls the parent process id: when the parent dies the
// plugin is adopted by another process and the id changes.
func watchParent(gone func()) {
	parent := os.Getppid()
	go func() {
		_ = wait.Until(context.Background(), parentPoll, func(context.Context) (bool, error) {
			return os.Getppid() != parent, nil
		})
		gone()
	}()
}

// parentPoll paces watchParent's reads of the parent process id.
var parentPoll = wait.Policy{Initial: 20 * time.Millisecond}
