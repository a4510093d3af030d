package conformance

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"pgregory.net/rapid"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// The model is the contract as an executable state machine: for each VM
// of the target, what the contract lets the driver's state be (power,
// session lock, current snapshot, the guest files the model wrote), and
// for every operation and every state it starts from, the answers and the
// states after it that the contract allows. The explorer (explore.go)
// drives random sequences of operations against the driver and holds
// every answer and every status it reads against the model; the first
// thing the model does not allow is a Deviation, citing the rules it
// breaks.

// ModelRule is a rule of the contract the model states, and what it holds
// the driver to.
type ModelRule struct {
	// Rule is the rule's mark in docs/contract.md, e.g. "§4.2".
	Rule string `json:"rule"`
	// States says what the model allows, in one sentence.
	States string `json:"states"`
}

// modelRules are the rules the model states, in the contract's order.
var modelRules = []ModelRule{
	{"§1.1", "Info answers the same on every call"},
	{"§1.2a", "an operation behind a capability the driver does not declare answers unsupported, whatever the VM's state"},
	{"§1.2b", "an operation behind a declared capability never answers unsupported"},
	{"§2.1a", "ListVMs lists every VM of the target, each once"},
	{"§2.1b", "ListVMs lists the VMs in the same order every time"},
	{"§2.2", "an operation issued while ListVMs runs is not refused as locked for it"},
	{"§3.2a", "every status has a normalized power state and the hypervisor's own word"},
	{"§3.2b", "UnmappedVM is reported unknown"},
	{"§3.2c", "a VM Status reports off-like is not refused by Unlock or Restore for still having a process"},
	{"§3.3a", "the lock is locked or unlocked with status.lock, unknown without it"},
	{"§3.3b", "a VM that has a process is reported locked, and a VM reported unlocked is not refused as locked; LockVM, once off after a stop, is reported locked until something releases it"},
	{"§3.4", "CurrentSnapshot names the snapshot the VM was last restored to (the one it was found at, at first)"},
	{"§3.5", "StateChanged moves when the power state changes, and not while it stays"},
	{"§3.6", "an operation issued while Status runs is not refused as locked for it"},
	{"§4.1", "Start of an off-like, unlocked VM succeeds, and Status says starting or running right after"},
	{"§4.2", "Start of a running VM succeeds and changes nothing"},
	{"§4.3", "Start of an off-like VM whose session stays held answers locked"},
	{"§5.1a", "right after a power-off of a running VM returns, the VM is off-like or stopping"},
	{"§5.1b", "the power button of a running VM is accepted, and a power-off or an emergency stop gets the VM off-like"},
	{"§5.2a", "a stop of an off-like VM succeeds and changes nothing"},
	{"§5.2b", "an emergency stop of an off-like VM whose session is held releases it, or answers locked"},
	{"§5.5", "a stop of a VM on its way on or off answers success, invalid state or locked"},
	{"§6.1", "Unlock of a VM that has a process answers invalid state"},
	{"§6.2", "Unlock of an unlocked VM succeeds at once"},
	{"§6.3", "right after Unlock succeeds, Status says unlocked"},
	{"§7.1a", "Restore with an empty name restores the current snapshot"},
	{"§7.1b", "Restore (or a cleanup that restores) of a snapshot the VM does not have answers not found"},
	{"§7.2a", "Restore of a VM that has a process answers invalid state"},
	{"§7.2b", "Restore of an off-like VM whose session stays held answers locked"},
	{"§7.3", "right after Restore returns the VM is off-like at the snapshot, and no file written in its guest before is there"},
	{"§7.4", "restoring a VM already clean at a snapshot leaves it as restoring it the first time did"},
	{"§8.1", "right after Cleanup returns the VM is off-like, unlocked and at the snapshot asked for, and the steps it took are reported"},
	{"§8.2", "Cleanup of a clean VM takes no step and changes nothing"},
	{"§9.1", "a file copied into the guest reads back byte for byte"},
	{"§9.2a", "a command's exit code and output come back"},
	{"§9.2b", "a command that fails is a result with its exit code and stderr, not an error"},
	{"§9.2c", "a command still running at its timeout answers timeout, on time"},
	{"§9.3", "a file copied out of the guest is the one copied in, byte for byte"},
	{"§9.4", "a guest operation on a VM that is not running answers invalid state"},
	{"§9.5", "a command that writes more than the request's max_output comes back with at most that much of it, and says it dropped the rest"},
	{"§10.1a", "a watch first delivers the VM's current status"},
	{"§10.1b", "a watch follows the VM to the power state, lock and current snapshot Status shows it staying in"},
	{"§10.1c", "the driver closes its watch channel when the watch's context ends"},
	{"§10.1d", "a watch of a VM that does not exist is a not-found error, not a stream"},
	{"§11.2", "every error names its operation and VM and carries the driver's message"},
	{"§11.3", "every operation on a VM that does not exist answers not found"},
	{"§12.1a", "an operation answers by its deadline plus the margin, with timeout if it did not finish, and the driver itself no later"},
	{"§12.1b", "once an operation answered timeout, nothing more happens to the VM on its behalf"},
	{"§13.1a", "restores of two VMs at once overlap instead of waiting for each other"},
	{"§13.1b", "two operations at once on one VM each answer as alone, or locked or invalid state"},
}

// ModelRules lists the rules of the contract the model states, in the
// contract's order.
func ModelRules() []ModelRule { return slices.Clone(modelRules) }

// ruleIndex is the place of rule among modelRules; -1 if the model does
// not state it.
func ruleIndex(rule string) int {
	return slices.IndexFunc(modelRules, func(r ModelRule) bool { return r.Rule == rule })
}

// Deviation is what the model found the driver doing against the
// contract: the rules it breaks, and the shortest sequence of steps found
// that shows it.
type Deviation struct {
	// Rules are the rules broken, the first the one the deviation is
	// filed under.
	Rules []string `json:"rules"`
	// What says what the driver did, in words that are the same every
	// time the sequence shows it.
	What string `json:"what"`
	// Detail is what the driver answered and what Status said, this time.
	Detail string `json:"detail"`
	// Script is the sequence that shows it, one step a line, from VMs at
	// their baseline; the deviation showed at its last step, or at the end
	// of the sequence (AtEnd) when the model waited for something the
	// contract promises.
	Script []string `json:"script"`
	// AtEnd: the deviation showed once the steps were over, in what the
	// model waited for (a stop to take effect, a deadline's aftermath, a
	// watch to follow).
	AtEnd bool `json:"at_end,omitempty"`
	// Seed replays the sequence that first showed it (Exploration.Seed).
	Seed uint64 `json:"seed"`
	// Found is how many steps that sequence had before shrinking.
	Found int `json:"found"`
	// Log is what the model saw on the way through the sequence shown.
	Log []string `json:"log,omitempty"`
}

// key is the deviation in the words rapid compares runs by: its rules and
// what, never the values of one run.
func (d *Deviation) key() string { return strings.Join(d.Rules, ", ") + ": " + d.What }

// String is the deviation as the CLI prints it.
func (d *Deviation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n  %s\n", d.key(), d.Detail)
	fmt.Fprintf(&b, "  seed %d; %d steps (%d before shrinking), from the VMs at their baseline:\n", d.Seed, len(d.Script), d.Found)
	for i, s := range d.Script {
		mark := "   "
		if i == len(d.Script)-1 && !d.AtEnd {
			mark = "-> "
		}
		fmt.Fprintf(&b, "  %s%s\n", mark, s)
	}
	if d.AtEnd {
		b.WriteString("  -> (the end of the sequence: what the model waited for)\n")
	}
	return b.String()
}

// deviate builds a deviation; the caller adds the script.
func deviate(rules []string, what string, format string, args ...any) *Deviation {
	return &Deviation{Rules: rules, What: what, Detail: fmt.Sprintf(format, args...)}
}

// rules is a shorthand for a list of marks.
func rules(r ...string) []string { return r }

// raise fails the rapid run with d from a call stack that spells d's rule
// in binary: rapid tells failures apart by the stack they were raised from
// (not by their message), so shrinking keeps to a sequence that breaks the
// rule first found, not any rule.
func raise(t *rapid.T, d *Deviation) {
	raiseAt(t, d, max(0, ruleIndex(d.Rules[0])), 7)
}

func raiseAt(t *rapid.T, d *Deviation, n, bits int) {
	switch {
	case bits == 0:
		t.Fatalf("%s", d.key())
	case n&1 == 0:
		raiseAt(t, d, n>>1, bits-1)
	default:
		raiseAt(t, d, n>>1, bits-1)
	}
}

// fileState is what the model knows of a guest file it wrote.
type fileState int

const (
	// filePresent: written since the VM last started; it must read back.
	filePresent fileState = iota
	// fileMaybe: written before the VM stopped; a guest may keep it or
	// not (a temporary directory in memory), but if it reads back it reads
	// back the same.
	fileMaybe
	// fileErased: written before a restore; the snapshot's disk does not
	// have it (§7.3).
	fileErased
)

// guestFile is a file the model wrote into the guest of Target.VM.
type guestFile struct {
	path  string
	data  []byte
	state fileState
}

// vmModel is what the model knows of one VM during a sequence.
type vmModel struct {
	name  string
	role  role
	snaps []string // the snapshots the target names for it
	// last is the last status of the observation chain: the reads right
	// before and right after each step.
	last hypervisor.Status
	// snapshot is what CurrentSnapshot must say (§3.4); snapKnown is false
	// while an operation cut short may or may not have changed it.
	snapshot  string
	snapKnown bool
	// sticky: LockVM was seen off and locked after a stop, a lock that
	// only Unlock, Cleanup or an emergency stop releases.
	sticky bool
	// stopped: a stop was accepted; LockVM's lock after it is sticky.
	stopped bool
	// acpi: the power button was pressed; the guest may go off by itself.
	acpi bool
	// cleanAt is the snapshot the VM is clean at (restored to it and not
	// run since); empty when it is not, or the model cannot tell.
	cleanAt string
	// stopDue: a power-off or emergency stop was accepted; the VM must be
	// off-like by then (§5.1b). unlockDue: an emergency stop of an off,
	// locked VM succeeded; the session must be gone by then (§5.2b).
	stopDue, unlockDue time.Time
	// cutShort: an operation on the VM answered timeout in this sequence;
	// a change nothing explains is the driver working on after it (§12.1b).
	cutShort bool
	// quiet holds from a timeout's answer until quietUntil, what the VM
	// must stay (§12.1b); nil when nothing is being watched.
	quietUntil time.Time
	quietOp    string
	// unsettled: the last operation on the VM was cut short, and what it
	// sent may still land (a kill, a start): the next operation's answer
	// is held only to the rules that hold whatever the VM is doing.
	unsettled bool
	files     map[int]*guestFile
}

// offLike reports whether the VM has no process, by the last status.
func (v *vmModel) offLike() bool { return v.last.Power.IsOff() }

// lockedNow reports whether the last status said locked.
func (v *vmModel) lockedNow() bool { return v.last.Lock == hypervisor.LockLocked }

// describeStatus is a status in a few words, with its state-change time.
func describeStatus(st hypervisor.Status) string {
	s := describe(st)
	if !st.StateChanged.IsZero() {
		s += ", changed " + st.StateChanged.Format("15:04:05.000000")
	}
	return s
}

// codeName is how an answer reads in a deviation: "success" or its code.
func codeName(err error) string {
	if err == nil {
		return "success"
	}
	return hypervisor.CodeOf(err).String()
}

// isCode reports whether err has one of codes; nil stands for success.
func isCode(err error, codes ...hypervisor.Code) bool {
	if err == nil {
		return false
	}
	return slices.Contains(codes, hypervisor.CodeOf(err))
}
