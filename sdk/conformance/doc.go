// Package conformance checks a hypervisor driver against the contract of
// docs/contract.md, the way sandbox's core relies on it.
//
// A driver author runs it from a test of their own module:
//
//	func TestConformance(t *testing.T) {
//		conformance.Run(t, conformance.Target{
//			Connect:  conformance.InProcess("mydriver", mydriver.New, configText),
//			VM:       "test-vm",
//			Snapshot: "clean",
//		})
//	}
//
// or, for a built plugin, with `sandbox conformance --plugin NAME`. Every
// check is a subtest with a stable name, grouped by capability
// ("Restore/UnknownSnapshotIsNotFound"), so `go test -run` selects checks
// and a failure names the clause (§) it enforces. A check that needs a
// capability the driver does not declare, or a VM the target does not
// name, is skipped with the reason.
//
// The suite drives real VMs: it starts, stops and restores the VMs the
// target names. Before each check it brings them back to a baseline (off,
// unlocked, at the snapshot), and when the run ends, also after a failure,
// it returns every VM it touched to the power state and snapshot it found
// it in. Give it disposable VMs that sit at their snapshot.
//
// Checks run through a real gRPC connection whatever the target: a plugin
// binary is launched by the plugin host exactly as the CLI launches it, and
// an in-process driver is served with sdk.ServeInProcess.
package conformance
