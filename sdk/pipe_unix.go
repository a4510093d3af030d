//go:build unix

package sdk

import (
	"os/signal"
	"syscall"
)

// surviveDeadHostPipe keeps the plugin alive when it logs after its host
// died. A plugin logs to stderr, a pipe the host reads; once the host is
// gone Go kills a process that writes to a broken stderr with SIGPIPE,
// which would end the plugin before its driver's Close has stopped what it
// started. Ignored, the write merely fails.
func surviveDeadHostPipe() { signal.Ignore(syscall.SIGPIPE) }
