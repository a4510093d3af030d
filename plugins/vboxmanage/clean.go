package vboxmanage

import (
	"sync"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// restoreMarks remember the restores this driver did, so that cleaning a
// VM that was restored and never touched since is a no-op (§8.2) without
// VirtualBox saying whether a VM's current state differs from its
// snapshot.
type restoreMarks struct {
	mu sync.Mutex
	m  map[string]restoreMark
}

// restoreMark is one finished restore: VirtualBox set the VM's state-change
// time while the restore ran, between start and end.
type restoreMark struct {
	start, end time.Time
}

func (r *restoreMarks) set(vm string, start, end time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]restoreMark{}
	}
	r.m[vm] = restoreMark{start: start, end: end}
}

func (r *restoreMarks) forget(vm string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, vm)
}

// untouched reports whether st proves that nothing happened to vm since
// this driver restored it to the snapshot req asks for: the VM is off and
// unlocked, that snapshot is current, and its last state change is the
// restore itself. Any start, stop or restore by anyone since would have
// moved the state-change time past the restore's end. A time without
// sub-second digits was reloaded from the settings file with its
// precision lost and proves nothing.
func (r *restoreMarks) untouched(vm string, req hypervisor.CleanupRequest, st hypervisor.Status) bool {
	r.mu.Lock()
	m, ok := r.m[vm]
	r.mu.Unlock()
	switch {
	case !ok, !st.Power.IsOff(), st.Lock != hypervisor.LockUnlocked:
		return false
	case req.Snapshot != "" && st.CurrentSnapshot != req.Snapshot:
		return false
	case st.StateChanged.IsZero() || st.StateChanged.Nanosecond() == 0:
		return false
	}
	changed := st.StateChanged
	return !changed.Before(m.start.Truncate(time.Millisecond)) && !changed.After(m.end)
}

// refusals remembers the VMs whose last operation VirtualBox refused
// because their session was held. The listing Status reads cannot show a
// session whose holder has no name (FACTS §1.2, item 7), so a VM it calls
// unlocked may still be held; a refusal is the evidence that it is, and
// lets Unlock and an emergency stop act on a VM the listing calls free.
type refusals struct {
	mu sync.Mutex
	m  map[string]bool
}

// note records how an operation on vm ended: refused as locked, or not.
func (r *refusals) note(vm string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if hypervisor.IsLocked(err) {
		if r.m == nil {
			r.m = map[string]bool{}
		}
		r.m[vm] = true
		return
	}
	delete(r.m, vm)
}

// held reports whether the last operation on vm was refused as locked.
func (r *refusals) held(vm string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[vm]
}
