//go:build unix

package main

import (
	"os/signal"
	"syscall"
)

// survivePipeToDeadHost keeps the plugin alive when it logs after its host
// died. The plugin logs to stderr, a pipe the host reads; once the host is
// gone, Go kills a process that writes to a broken stderr with SIGPIPE,
// which would end the plugin before the driver's Close has killed its
// VBoxManage processes and removed the guest password files. Ignored, the
// write merely fails.
func survivePipeToDeadHost() { signal.Ignore(syscall.SIGPIPE) }
