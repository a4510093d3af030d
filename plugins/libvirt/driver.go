// Package libvirt is the sandbox driver for libvirt's QEMU driver: its VMs
// are libvirt domains an operator already has, with their own snapshots,
// driven through libvirtd's RPC protocol on its local socket. It is
// written against the public SDK only, as a third-party driver would be.
// docs/libvirt.md covers setup, settings, CAPEv2 and the error table.
//
// How the contract maps onto libvirt:
//   - Status is libvirt's state and reason (virsh domstate --reason),
//     mapped onto the contract's words; what has none is unknown.
//   - The lock is held while the domain has a QEMU process, or while any
//     process holds QEMU's locks on one of an off domain's disk images
//     (qemu-img, qemu-nbd, a QEMU that libvirt lost track of). A libvirt
//     job held by another client ("cannot acquire state change lock") is
//     locked too.
//   - Stops: the ACPI power button (shutdown), destroy (power-off), and a
//     SIGKILL of the domain's QEMU process for when destroy itself hangs
//     (emergency).
//   - Restore of a snapshot taken with the guest running records the
//     snapshot as current and the domain as clean: the next start reverts
//     to it, which libvirt does by launching QEMU with -loadvm. A snapshot
//     of an off domain is reverted at once (libvirt runs qemu-img).
//   - Guest operations go through qemu-agent-command.
package libvirt

import (
	"context"
	"encoding/xml"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// Version is the driver's own version, reported in Info.
const Version = "0.1.0"

// capabilities: everything the contract has. Guest operations need the
// QEMU guest agent in the guest and its channel in the domain; a domain
// without them answers invalid state.
var capabilities = hypervisor.NewCapabilities(
	hypervisor.CapList, hypervisor.CapStopACPI, hypervisor.CapStopPowerOff, hypervisor.CapStopEmergency,
	hypervisor.CapUnlock, hypervisor.CapRestore, hypervisor.CapCleanup, hypervisor.CapLockState,
	hypervisor.CapWatch, hypervisor.CapGuestCopyIn, hypervisor.CapGuestExec, hypervisor.CapGuestCopyOut,
)

// Driver drives libvirt domains. It is safe for concurrent use: the
// operations that change a domain take its lock in this process, and what
// it knows of a domain between calls it keeps in libvirt (the domain's
// metadata), so that every plugin process sees the same.
type Driver struct {
	hypervisor.Unimplemented

	log  hclog.Logger
	cfg  *settings
	conn *conn

	infoOnce sync.Once
	info     hypervisor.Info

	locks  wait.Keyed[string] // per VM: held by operations that change it
	agents wait.Keyed[string] // per VM: held by guest operations

	mu       sync.Mutex
	domains  map[string]golibvirt.Domain // per VM: its domain, as last looked up
	restores map[string]bool             // VMs libvirt is reverting for this process
	reverts  map[string]time.Duration    // per VM: how long its last revert of an off domain took
}

// New is the plugin's factory. It does not reach libvirtd: the first
// operation does, and a libvirtd that is down answers unavailable until it
// is back.
func New(cfg sdk.Config, log hclog.Logger) (hypervisor.Driver, error) {
	s, err := load(cfg)
	if err != nil {
		return nil, err
	}
	d := &Driver{
		log:     log,
		cfg:     s,
		conn:    &conn{uri: s.URI, socket: s.Socket, timeout: s.Timeouts.Connect},
		domains: map[string]golibvirt.Domain{}, restores: map[string]bool{}, reverts: map[string]time.Duration{},
	}
	log.Info("libvirt driver ready", "uri", s.URI, "socket", s.Socket, "vms", len(s.vms))
	return d, nil
}

// Info describes the driver (§1.1). The hypervisor's description comes
// from libvirtd once, the first time it answers.
func (d *Driver) Info(ctx context.Context) (hypervisor.Info, error) {
	d.mu.Lock()
	known := d.info.Name != ""
	info := d.info
	d.mu.Unlock()
	if known {
		return info, nil
	}
	info = hypervisor.Info{Name: "libvirt", Version: Version, ContractVersion: hypervisor.ContractVersion, Capabilities: capabilities}
	var lib, hv uint64
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeouts.Connect)
	defer cancel()
	err := d.conn.do(ctx, hypervisor.OpInfo, "", func(l *golibvirt.Libvirt) error {
		var err error
		if lib, err = l.ConnectGetLibVersion(); err != nil {
			return err
		}
		hv, err = l.ConnectGetVersion()
		return err
	})
	if err != nil {
		// Info answers the same on every call (§1.1): the description
		// must not change once libvirtd answers, so it never names it.
		info.Hypervisor = fmt.Sprintf("libvirt at %s (%s)", d.cfg.Socket, d.cfg.URI)
	} else {
		info.Hypervisor = fmt.Sprintf("libvirt %s, QEMU %s, at %s (%s)", version(lib), version(hv), d.cfg.Socket, d.cfg.URI)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.info.Name == "" {
		d.info = info
	}
	return d.info, nil
}

// version formats libvirt's major*1000000+minor*1000+release.
func version(v uint64) string { return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000) }

// Close ends the connection to libvirtd. Domains are left as they are:
// they belong to the operator, not to the plugin process.
func (d *Driver) Close() error { return d.conn.close() }

// ListVMs lists the configured VMs whose domains exist, by name, with
// their domains' UUIDs and power states (§2.1).
func (d *Driver) ListVMs(ctx context.Context) ([]hypervisor.VM, error) {
	if err := hypervisor.FromContext(ctx, hypervisor.OpList, ""); err != nil {
		return nil, err
	}
	var out []hypervisor.VM
	for _, name := range slices.Sorted(maps.Keys(d.cfg.vms)) {
		v := d.cfg.vms[name]
		st, o, err := d.observe(ctx, hypervisor.OpList, v)
		switch {
		case hypervisor.IsNotFound(err):
			d.log.Warn("a configured VM has no domain in libvirt", "vm", name, "domain", v.Domain)
			continue
		case err != nil:
			return nil, err
		}
		out = append(out, hypervisor.VM{Name: name, ID: uuidString(o.dom.UUID), Power: st.Power})
	}
	return out, nil
}

// vmOf returns the configured VM, or the not-found answer every operation
// gives for another name (§11.3).
func (d *Driver) vmOf(ctx context.Context, op, name string) (*vm, error) {
	if err := hypervisor.FromContext(ctx, op, name); err != nil {
		return nil, err
	}
	v, ok := d.cfg.vms[name]
	if !ok {
		return nil, hypervisor.NewError(hypervisor.CodeNotFound, op, name,
			"no VM named %q in the libvirt driver's configuration (its [vms.NAME] tables)", name)
	}
	return v, nil
}

// begin starts an operation that changes a VM: it waits, within ctx, for
// the other such operations of this process on the VM to end.
func (d *Driver) begin(ctx context.Context, op, name string) (*vm, func(), error) {
	v, err := d.vmOf(ctx, op, name)
	if err != nil {
		return nil, nil, err
	}
	release, err := d.acquire(ctx, &d.locks, op, name)
	if err != nil {
		return nil, nil, err
	}
	return v, release, nil
}

// acquire takes name's lock of the set, within ctx.
func (d *Driver) acquire(ctx context.Context, set *wait.Keyed[string], op, name string) (func(), error) {
	release, err := set.Lock(ctx, name)
	if err != nil {
		return nil, hypervisor.FromContext(ctx, op, name)
	}
	return release, nil
}

// domain looks v's domain up, or returns the one looked up before: libvirt
// finds a domain by its UUID, which a definition keeps.
func (d *Driver) domain(ctx context.Context, op string, v *vm, fresh bool) (golibvirt.Domain, error) {
	d.mu.Lock()
	dom, ok := d.domains[v.name]
	d.mu.Unlock()
	if ok && !fresh {
		return dom, nil
	}
	err := d.conn.do(ctx, op, v.name, func(l *golibvirt.Libvirt) error {
		var err error
		dom, err = l.DomainLookupByName(v.Domain)
		return err
	})
	if hypervisor.IsNotFound(err) {
		return dom, &hypervisor.Error{Code: hypervisor.CodeNotFound, Op: op, VM: v.name,
			Message: fmt.Sprintf("libvirt has no domain %q (%s): %s", v.Domain, d.cfg.URI, messageOf(err)), Err: err}
	}
	if err != nil {
		return dom, err
	}
	d.mu.Lock()
	d.domains[v.name] = dom
	d.mu.Unlock()
	return dom, nil
}

// call runs f on v's domain. A domain that was undefined and defined again
// since it was looked up has a new UUID: f is tried once more with the
// domain looked up afresh.
func (d *Driver) call(ctx context.Context, op string, v *vm, f func(l *golibvirt.Libvirt, dom golibvirt.Domain) error) error {
	dom, err := d.domain(ctx, op, v, false)
	if err != nil {
		return err
	}
	err = d.conn.do(ctx, op, v.name, func(l *golibvirt.Libvirt) error { return f(l, dom) })
	if libvirtCode(err) != golibvirt.ErrNoDomain {
		return err
	}
	if dom, err = d.domain(ctx, op, v, true); err != nil {
		return err
	}
	return d.conn.do(ctx, op, v.name, func(l *golibvirt.Libvirt) error { return f(l, dom) })
}

// messageOf is the message of a contract error, or the error's text.
func messageOf(err error) string {
	if he, ok := err.(*hypervisor.Error); ok && he.Message != "" {
		return he.Message
	}
	return err.Error()
}

// uuidString formats a libvirt UUID as libvirt prints it.
func uuidString(u golibvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// domainXML is what the driver reads of a domain's definition.
type domainXML struct {
	Disks []struct {
		Type   string `xml:"type,attr"`
		Device string `xml:"device,attr"`
		Driver struct {
			Type string `xml:"type,attr"`
		} `xml:"driver"`
		Source struct {
			File string `xml:"file,attr"`
		} `xml:"source"`
	} `xml:"devices>disk"`
	Channels []struct {
		Target struct {
			Name string `xml:"name,attr"`
		} `xml:"target"`
	} `xml:"devices>channel"`
}

// disks are the image files of a domain's disks (not its CD-ROMs).
func (x domainXML) disks() []string {
	var out []string
	for _, disk := range x.Disks {
		if disk.Type == "file" && disk.Device != "cdrom" && disk.Device != "floppy" && disk.Source.File != "" {
			out = append(out, disk.Source.File)
		}
	}
	return out
}

// qcow2Disks are the qcow2 image files of a domain's disks: where libvirt
// keeps its internal snapshots.
func (x domainXML) qcow2Disks() []string {
	var out []string
	for _, disk := range x.Disks {
		if disk.Type == "file" && disk.Driver.Type == "qcow2" && disk.Device != "cdrom" && disk.Source.File != "" {
			out = append(out, disk.Source.File)
		}
	}
	return out
}

// hasAgent reports whether the domain has the guest agent's channel.
func (x domainXML) hasAgent() bool {
	for _, c := range x.Channels {
		if c.Target.Name == "org.qemu.guest_agent.0" {
			return true
		}
	}
	return false
}

// definition reads v's domain definition as it would next start.
func (d *Driver) definition(ctx context.Context, op string, v *vm) (domainXML, error) {
	var text string
	err := d.call(ctx, op, v, func(l *golibvirt.Libvirt, dom golibvirt.Domain) error {
		var err error
		text, err = l.DomainGetXMLDesc(dom, golibvirt.DomainXMLInactive)
		return err
	})
	var x domainXML
	if err != nil {
		return x, err
	}
	if err := xml.Unmarshal([]byte(text), &x); err != nil {
		return x, hypervisor.NewError(hypervisor.CodeFailed, op, v.name, "libvirt's definition of domain %q does not parse: %v", v.Domain, err)
	}
	return x, nil
}
