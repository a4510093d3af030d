package libvirt

import (
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// snapshotXML is what the driver reads of a snapshot's description.
type snapshotXML struct {
	State  string `xml:"state"`
	Memory struct {
		Snapshot string `xml:"snapshot,attr"`
	} `xml:"memory"`
}

// withMemory reports whether the snapshot holds a guest's memory: libvirt
// reverts it by launching QEMU with -loadvm.
func (s snapshotXML) withMemory() bool {
	switch s.State {
	case "shutoff", "disk-snapshot", "nostate", "crashed", "":
		return false
	}
	return s.Memory.Snapshot != "no"
}

// snapshot looks a snapshot of v's domain up; one it does not have answers
// not found with the names it has (§7.1b).
func (d *Driver) snapshot(ctx context.Context, op string, v *vm, name string) (golibvirt.DomainSnapshot, snapshotXML, error) {
	var snap golibvirt.DomainSnapshot
	var desc snapshotXML
	if name == "" {
		return snap, desc, hypervisor.NewError(hypervisor.CodeNotFound, op, v.name,
			"domain %q has no current snapshot: name one, or set snapshot in its [vms.%s] table", v.Domain, v.name)
	}
	var text string
	var names []string
	err := d.call(ctx, op, v, func(l *golibvirt.Libvirt, dom golibvirt.Domain) error {
		var err error
		if snap, err = l.DomainSnapshotLookupByName(dom, name, 0); err != nil {
			if libvirtCode(err) == golibvirt.ErrNoDomainSnapshot {
				names, _ = l.DomainSnapshotListNames(dom, 256, 0)
			}
			return err
		}
		text, err = l.DomainSnapshotGetXMLDesc(snap, 0)
		return err
	})
	if hypervisor.IsNotFound(err) {
		have := "none"
		if len(names) > 0 {
			have = strings.Join(names, ", ")
		}
		return snap, desc, &hypervisor.Error{Code: hypervisor.CodeNotFound, Op: op, VM: v.name,
			Message: fmt.Sprintf("%s; domain %q has: %s", messageOf(err), v.Domain, have), Err: err}
	}
	if err != nil {
		return snap, desc, err
	}
	if err := xml.Unmarshal([]byte(text), &desc); err != nil {
		return snap, desc, hypervisor.NewError(hypervisor.CodeFailed, op, v.name, "libvirt's description of snapshot %q does not parse: %v", name, err)
	}
	return snap, desc, nil
}

// Restore takes the VM back to a snapshot (§7). The domain must be off
// and its disks free. A snapshot with the guest's memory becomes libvirt's
// current snapshot and the domain is marked clean at it: the next Start
// reverts to it, which is one launch of QEMU with -loadvm, where reverting
// now would launch QEMU only to kill it. A snapshot of an off domain is
// reverted at once: libvirt runs qemu-img.
func (d *Driver) Restore(ctx context.Context, name, snapshot string) error {
	v, release, err := d.begin(ctx, hypervisor.OpRestore, name)
	if err != nil {
		return err
	}
	defer release()
	st, o, err := d.observe(ctx, hypervisor.OpRestore, v)
	if err != nil {
		return err
	}
	if err := restorable(hypervisor.OpRestore, v, st, o); err != nil {
		return err
	}
	if snapshot == "" {
		snapshot = d.currentOrConfigured(v, st)
	}
	return d.restore(ctx, hypervisor.OpRestore, v, st, o, snapshot)
}

// currentOrConfigured is the snapshot a restore without a name goes to:
// libvirt's current snapshot (§7.1a), else the VM's configured one.
func (d *Driver) currentOrConfigured(v *vm, st hypervisor.Status) string {
	if st.CurrentSnapshot != "" {
		return st.CurrentSnapshot
	}
	return v.Snapshot
}

// restorable is nil when a VM in state st may be restored (§7.2).
func restorable(op string, v *vm, st hypervisor.Status, o observation) error {
	switch {
	case active(o.state) && st.Power == hypervisor.PowerStopping:
		return hypervisor.NewError(hypervisor.CodeLocked, op, v.name, "the domain is %s: its QEMU process is still exiting", st.Raw)
	case active(o.state):
		return hypervisor.NewError(hypervisor.CodeInvalidState, op, v.name, "the domain is %s; stop it first", st.Raw)
	case st.Lock == hypervisor.LockLocked:
		return hypervisor.NewError(hypervisor.CodeLocked, op, v.name, "the domain is %s", st.Raw)
	}
	return nil
}

// restore restores an off, unlocked domain to snapshot.
func (d *Driver) restore(ctx context.Context, op string, v *vm, st hypervisor.Status, o observation, snapshot string) error {
	snap, desc, err := d.snapshot(ctx, op, v, snapshot)
	if err != nil {
		return err
	}
	begun := time.Now()
	if err := d.inImages(ctx, op, v, o, snapshot); err != nil {
		return err
	}
	if desc.withMemory() {
		err = d.call(ctx, op, v, func(l *golibvirt.Libvirt, dom golibvirt.Domain) error {
			if o.reason == shutoffSaved {
				// A managed save would be resumed instead of the snapshot.
				if err := l.DomainManagedSaveRemove(dom, 0); err != nil {
					return err
				}
			}
			if st.CurrentSnapshot == snapshot {
				return nil
			}
			// What `virsh snapshot-current` does: the snapshot's own
			// description, redefined as current.
			text, err := l.DomainSnapshotGetXMLDesc(snap, uint32(golibvirt.DomainSnapshotXMLSecure))
			if err != nil {
				return err
			}
			_, err = l.DomainSnapshotCreateXML(dom, text, uint32(golibvirt.DomainSnapshotCreateRedefine|golibvirt.DomainSnapshotCreateCurrent))
			return err
		})
	} else {
		err = d.revertOff(ctx, op, v, snap)
	}
	if err != nil {
		return err
	}
	if err := d.setMarker(ctx, op, v, &marker{Snapshot: snapshot, Resume: desc.withMemory()}); err != nil {
		return err
	}
	d.log.Info("VM restored", "vm", v.name, "snapshot", snapshot, "resumes", desc.withMemory(), "took", time.Since(begun))
	return nil
}

// revertOff reverts an off domain to a snapshot of an off domain: libvirt
// runs qemu-img on its disks. libvirt cannot abort it once begun, so the
// driver begins one only when the caller's deadline leaves at least the
// time the last revert of the domain took, and otherwise answers timeout
// at once, having changed nothing (§12.1b). One begun and overtaken by the
// deadline anyway finishes in libvirtd; Status says restoring until it
// has.
func (d *Driver) revertOff(ctx context.Context, op string, v *vm, snap golibvirt.DomainSnapshot) error {
	d.mu.Lock()
	last, known := d.reverts[v.name]
	d.mu.Unlock()
	if deadline, ok := ctx.Deadline(); ok && known && time.Until(deadline) < last*3/2 {
		return hypervisor.NewError(hypervisor.CodeTimeout, op, v.name,
			"reverting the domain to %q took %s last time, more than the deadline leaves (%s); libvirt cannot abort a revert, so none was begun",
			snap.Name, last.Round(time.Millisecond), time.Until(deadline).Round(time.Millisecond))
	}
	d.mu.Lock()
	d.restores[v.name] = true
	d.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		begun := time.Now()
		// The caller may leave; the revert's end is still waited for, so
		// that Status says restoring until libvirt is done.
		err := d.call(context.Background(), op, v, func(l *golibvirt.Libvirt, _ golibvirt.Domain) error {
			return l.DomainRevertToSnapshot(snap, 0)
		})
		d.mu.Lock()
		delete(d.restores, v.name)
		if err == nil {
			d.reverts[v.name] = time.Since(begun)
		}
		d.mu.Unlock()
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		d.log.Warn("a revert outlived its caller's deadline; libvirt finishes it", "vm", v.name, "snapshot", snap.Name)
		return hypervisor.FromContext(ctx, op, v.name)
	}
}

// inImages checks that the snapshot is in the domain's qcow2 images, where
// libvirt keeps internal snapshots: libvirt's metadata outlives an image
// replaced or a snapshot deleted with qemu-img, and a restore that trusted
// it would leave a domain whose next start fails ("Snapshot 'x' does not
// exist in one or more devices"). qemu-img reads the images without taking
// their locks (-U); where it is not installed, or the disks are not files
// this process can read, libvirt's metadata is all there is to go by.
func (d *Driver) inImages(ctx context.Context, op string, v *vm, o observation, snapshot string) error {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		return nil
	}
	for _, disk := range o.qcow2 {
		if _, err := os.Stat(disk); err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		out, err := exec.CommandContext(cctx, qemuImg, "snapshot", "-U", "-l", disk).CombinedOutput()
		cancel()
		if err != nil {
			if cerr := hypervisor.FromContext(ctx, op, v.name); cerr != nil {
				return cerr
			}
			return hypervisor.NewError(hypervisor.CodeFailed, op, v.name, "qemu-img snapshot -l %s: %v: %s", disk, err, strings.TrimSpace(string(out)))
		}
		if !hasTag(string(out), snapshot) {
			return hypervisor.NewError(hypervisor.CodeFailed, op, v.name,
				"libvirt has snapshot %q of domain %q, but its image %s does not (qemu-img snapshot -l lists: %s): "+
					"the image was replaced or the snapshot deleted outside libvirt; take the snapshot again",
				snapshot, v.Domain, disk, tags(string(out)))
		}
	}
	return nil
}

// tags are the snapshot names of `qemu-img snapshot -l`'s table.
func tags(list string) string {
	var out []string
	for _, line := range strings.Split(list, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] != "ID" && f[0] != "Snapshot" {
			out = append(out, f[1])
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// hasTag reports whether `qemu-img snapshot -l`'s table lists tag.
func hasTag(list, tag string) bool {
	for _, line := range strings.Split(list, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] != "ID" && f[1] == tag {
			return true
		}
	}
	return false
}
