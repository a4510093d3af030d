// Command sandbox drives VMs through hypervisor plugins: it lists plugins
// and VMs, shows their state and runs the lifecycle operations that leave a
// VM off, unlocked and clean.
//
// Exit status: 0 on success, 1 when an operation failed, 2 on a usage error,
// 130 (Ctrl-C) or 143 (SIGTERM) when a command was interrupted.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// run executes one command line and returns the process's exit status.
func run(args []string) int {
	a := newApp(os.Stdout, os.Stderr)
	defer a.close()
	root := a.rootCommand()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0 // a service stopped by SIGTERM, as it should be, exits 0
	}
	var status exitStatus
	if errors.As(err, &status) {
		return int(status)
	}
	var ue *usageError
	if errors.As(err, &ue) || isCobraUsageError(err) {
		fmt.Fprintf(os.Stderr, "sandbox: %v\nRun 'sandbox --help' for usage.\n", err)
		return 2
	}
	if !errors.Is(err, errReported) && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "sandbox: %v\n", err)
	}
	// A command that failed because Ctrl-C or SIGTERM cut it short says so
	// in its status, as a shell would.
	if status := a.interruptedStatus(); status != 0 {
		return status
	}
	return 1
}
