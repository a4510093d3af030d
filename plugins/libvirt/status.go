package libvirt

import (
	"context"
	"encoding/xml"
	"fmt"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// metadataURI is the namespace of the driver's element in a domain's
// <metadata>, where it keeps, between calls and plugin processes, that the
// domain is clean at a snapshot.
const (
	metadataURI = "urn:sandbox:libvirt"
	metadataKey = "sandbox"
)

// marker is the driver's element in a domain's metadata: present while the
// domain is clean at Snapshot since a Restore, removed by the next Start.
// Resume says the snapshot holds a running guest, which the next start
// resumes.
type marker struct {
	XMLName  xml.Name `xml:"restored"`
	Snapshot string   `xml:"snapshot,attr"`
	Resume   bool     `xml:"resume,attr"`
}

// observation is what observe learnt of a domain besides its status.
type observation struct {
	dom    golibvirt.Domain
	state  golibvirt.DomainState
	reason int32
	// marker is the driver's metadata; nil when the domain ran since its
	// last restore or was never restored by the driver.
	marker *marker
	// disks are an off domain's image files, qcow2 those of them in qcow2
	// format, and holders the processes holding them (found only when one
	// is locked).
	disks   []string
	qcow2   []string
	holders []process
	// job says another libvirt job holds a running domain.
	job string
}

// resumes is the snapshot the domain's next start resumes, or "".
func (o observation) resumes(current string) string {
	if o.marker != nil && o.marker.Resume && o.marker.Snapshot == current && !active(o.state) {
		return current
	}
	return ""
}

// Status reports the VM's state (§3). It takes no libvirt job: libvirt
// answers a state, the current snapshot, the metadata and the definition
// without one, and the driver tests QEMU's image locks without taking them.
func (d *Driver) Status(ctx context.Context, name string) (hypervisor.Status, error) {
	v, err := d.vmOf(ctx, hypervisor.OpStatus, name)
	if err != nil {
		return hypervisor.Status{}, err
	}
	st, _, err := d.observe(ctx, hypervisor.OpStatus, v)
	return st, err
}

// observe reads a domain's state from libvirt and, for an off domain, the
// locks on its disks.
func (d *Driver) observe(ctx context.Context, op string, v *vm) (hypervisor.Status, observation, error) {
	var o observation
	st := hypervisor.Status{VM: v.name, Lock: hypervisor.LockUnlocked}
	var current string
	var managed int32
	var meta string
	var control uint32
	var controlTime uint64
	err := d.call(ctx, op, v, func(l *golibvirt.Libvirt, dom golibvirt.Domain) error {
		o.dom = dom
		state, reason, err := l.DomainGetState(dom, 0)
		if err != nil {
			return err
		}
		o.state, o.reason = golibvirt.DomainState(state), reason
		snap, err := l.DomainSnapshotCurrent(dom, 0)
		switch {
		case err == nil:
			current = snap.Name
		case libvirtCode(err) != golibvirt.ErrNoDomainSnapshot:
			return err
		}
		if active(o.state) {
			// Only a running domain has a job to report; an off one fails
			// with "domain is not running".
			if c, _, t, err := l.DomainGetControlInfo(dom, 0); err == nil {
				control, controlTime = c, t
			}
			return nil
		}
		meta, err = l.DomainGetMetadata(dom, int32(golibvirt.DomainMetadataElement), golibvirt.OptString{metadataURI}, golibvirt.DomainAffectConfig)
		if err != nil && libvirtCode(err) != golibvirt.ErrNoDomainMetadata {
			return err
		}
		if o.reason == shutoffSaved {
			if managed, err = l.DomainHasManagedSaveImage(dom, 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return st, o, err
	}
	st.CurrentSnapshot = current
	st.Power, st.Raw = powerOf(o.state, o.reason), raw(o.state, o.reason)
	if active(o.state) {
		// The domain's QEMU process holds it.
		st.Lock = hypervisor.LockLocked
		switch golibvirt.DomainControlState(control) {
		case golibvirt.DomainControlJob, golibvirt.DomainControlOccupied:
			o.job = "a libvirt job holds the domain"
			if controlTime > 0 {
				o.job += fmt.Sprintf(" (for %s)", time.Duration(controlTime)*time.Millisecond)
			}
			st.Raw += "; " + o.job
		case golibvirt.DomainControlError:
			st.Raw += "; libvirt cannot talk to its QEMU process"
		}
		return st, o, nil
	}
	if meta != "" {
		var m marker
		if xml.Unmarshal([]byte(meta), &m) == nil && m.Snapshot != "" {
			o.marker = &m
		}
	}
	if o.reason == shutoffSaved && managed == 0 {
		// A domain saved to a file of the operator's (virsh save) resumes
		// only from that file; its next start boots.
		st.Power = hypervisor.PowerOff
	}
	if snap := o.resumes(current); snap != "" {
		st.Power = hypervisor.PowerSaved
		st.Raw += "; its next start resumes snapshot " + snap
	}
	d.mu.Lock()
	restoring := d.restores[v.name]
	d.mu.Unlock()
	if restoring {
		st.Power, st.Raw = hypervisor.PowerRestoring, st.Raw+"; reverting to a snapshot"
	}
	x, err := d.definition(ctx, op, v)
	if err != nil {
		return st, o, err
	}
	o.disks, o.qcow2 = x.disks(), x.qcow2Disks()
	for _, disk := range o.disks {
		if held, _ := imageLocked(disk); held {
			st.Lock = hypervisor.LockLocked
			o.holders = scan(uuidString(o.dom.UUID), o.disks)
			st.Raw += "; its disk " + disk + " is held by " + describe(o.holders)
			break
		}
	}
	return st, o, nil
}

// describe names the processes holding a disk, for messages.
func describe(ps []process) string {
	if len(ps) == 0 {
		return "a process this plugin cannot see"
	}
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.String()
	}
	return strings.Join(names, ", ")
}

// setMarker writes the driver's metadata into the domain's persistent
// definition; nil removes it.
func (d *Driver) setMarker(ctx context.Context, op string, v *vm, m *marker) error {
	var value golibvirt.OptString
	if m != nil {
		b, _ := xml.Marshal(m)
		value = golibvirt.OptString{string(b)}
	}
	return d.call(ctx, op, v, func(l *golibvirt.Libvirt, dom golibvirt.Domain) error {
		return l.DomainSetMetadata(dom, int32(golibvirt.DomainMetadataElement), value,
			golibvirt.OptString{metadataKey}, golibvirt.OptString{metadataURI}, golibvirt.DomainAffectConfig)
	})
}
