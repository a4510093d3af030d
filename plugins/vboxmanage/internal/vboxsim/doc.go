// Package vboxsim simulates VBoxManage so that the VirtualBox driver can be
// tested end to end where VirtualBox cannot run.
//
// The simulator is a real executable (see cmd/vboxsim) that the tests build
// and point the driver at. Every invocation is one process, as with
// VBoxManage: it locks the state directory, loads the world (VMs, their
// states, snapshot trees and session locks), applies the time that has
// passed (a guest that was sent the ACPI button has shut down by now, a
// VM process that powered off has by now released its session), runs the
// command and saves the world again. Commands print the texts, progress
// bars and exit codes of the VirtualBox version and host OS the world is
// configured for, and fail the way the configured faults say.
//
// Session locks follow VirtualBox's model: the VM process holds the write
// lock for its whole life and for a while after it powered off (the
// session is "unlocking"); commands that ask for a shared lock
// (showvminfo, controlvm, snapshot, guestcontrol) on an unlocked machine
// hold it exclusively while they run, so two concurrent commands can
// collide; a lock held by a VBoxManage that died is released, as VBoxSVC's
// client watcher would.
//
// The state directory is VBOX_USER_HOME, VirtualBox's own per-user
// settings variable, so the driver's user_home setting selects a
// simulated world the way it selects a real one. Every invocation's
// argument list is appended to argv.log there, for tests that count
// invocations or check that no secret was passed on a command line.
package vboxsim
