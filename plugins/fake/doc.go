// Package fake is the reference hypervisor: an in-memory world of
// simulated VMs behind the hypervisor.Driver contract, with faults a test
// can script. Every test of the project that needs a hypervisor stands on
// it, so it implements every clause of the contract and misbehaves the way
// VirtualBox does where that matters to sandbox: session locks that linger
// after the VM process is gone, "already locked" errors meanwhile, guests
// that ignore the ACPI power button, VMs that hang in stopping until an
// emergency stop.
//
// Time is real wall-clock time, but state is computed, not simulated: an
// operation records the transition it started as a target state and a due
// time, and every read applies the transitions that have fallen due. No
// goroutine has to run for the world to move on, and a world saved to
// state_dir moves on the same way in the next process that loads it.
//
// The lock model: a VM process (starting, running, paused, stopping,
// stuck) holds the VM's session lock, and so does a restore in progress.
// When the process goes away the lock lingers for unlock_after_stop (or a
// fault's duration) and then goes; with stale_lock_after_stop it stays
// until Unlock releases it. Start and Restore of a locked VM answer
// CodeLocked with VirtualBox's words.
//
// The fake is also the conformance suite's proof (sdk/conformance): it
// passes every check, and with violations = ["early-off", ...] it breaks
// one rule of the contract each (see Violation), so that a test can show
// the suite catches exactly that. A VM with raw_state is in a state no
// driver can map, for the check that such a state is reported unknown.
//
// The configuration is the Config type, decoded strictly from the plugin's
// table of config.toml by New, the plugin's factory.
package fake
