package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/sandboxhq/sandbox/sdk/conformance"
)

// worldConfig is a configuration file with two VMs that sleep until
// stopped, their state kept in dir.
func worldConfig(dir string) string {
	return fmt.Sprintf(`
[plugins.procvm.config]
state_dir = %q

[plugins.procvm.config.vms.worker]
command = ["sleep", "3600"]
snapshots = { clean = "snapshots/clean", patched = "snapshots/patched" }

[plugins.procvm.config.vms.helper]
command = ["sleep", "3600"]
snapshots = { clean = "snapshots/clean" }
`, dir)
}

// The whole conformance suite, run against the driver served in this test
// process over gRPC, exactly as sandbox would reach the plugin.
func TestConformance(t *testing.T) {
	conformance.Run(t, conformance.Target{
		Connect:       conformance.InProcess("procvm", New, worldConfig(t.TempDir())),
		VM:            "worker",
		Snapshot:      "clean",
		OtherSnapshot: "patched", // a restore of it must really go there
		PeerVM:        "helper",
		Guest:         conformance.Guest{Dir: "."}, // guest paths are relative to the VM's directory
		Timing:        conformance.Timing{Settle: 10 * time.Second, ACPI: 2 * time.Second},
		// After the checks, random sequences of operations held against the
		// model of the contract, for a while.
		Model: conformance.Exploration{Duration: 15 * time.Second},
	})
}
