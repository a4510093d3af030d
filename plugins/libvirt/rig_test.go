package libvirt_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/conformance"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The tests in this package that need libvirt run the driver as users run
// it: the sandbox-plugin-libvirt executable launched by the plugin host (or
// the sandbox CLI), on real libvirt domains of the QEMU driver's test
// guest (plugins/qemu/guest/build.sh builds it from Debian's packages),
// served by a libvirtd of the tests' own (daemon_test.go). Without libvirt
// they are skipped, and say so.

const (
	pluginPkg = "github.com/sandboxhq/sandbox/plugins/libvirt/cmd/sandbox-plugin-libvirt"
	cliPkg    = "github.com/sandboxhq/sandbox/cmd/sandbox"
	qemuPkg   = "github.com/sandboxhq/sandbox/plugins/qemu/cmd/sandbox-plugin-qemu"
	install   = "apt-get install --no-install-recommends libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients " +
		"qemu-system-x86 qemu-utils qemu-guest-agent busybox-static cpio"
)

// needLibvirt skips t when libvirt and QEMU are not installed or the tests
// cannot make a libvirtd of their own (they must run as root, with
// unshare), or fails it where SANDBOX_LIBVIRT_TESTS=required says they
// must run (.ci/run).
func needLibvirt(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("libvirt test skipped: -short (make test-short) leaves out what needs a real hypervisor")
	}
	missing := ""
	for _, tool := range []string{"libvirtd", "virsh", "unshare", "setsid", "stdbuf", "qemu-system-x86_64", "qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = tool + " is not installed"
		}
	}
	if _, err := os.Stat("/usr/sbin/qemu-ga"); err != nil {
		missing = "/usr/sbin/qemu-ga is not installed"
	}
	if missing == "" && os.Geteuid() != 0 {
		missing = "the tests run their own libvirtd in namespaces of its own, which needs root"
	}
	if missing == "" {
		return
	}
	msg := fmt.Sprintf("libvirt test skipped: %s (%s; .ci/run does)", missing, install)
	if os.Getenv("SANDBOX_LIBVIRT_TESTS") == "required" {
		t.Fatal(strings.Replace(msg, "skipped", "cannot run, and SANDBOX_LIBVIRT_TESTS=required", 1))
	}
	t.Skip(msg)
}

// lab is what every test of the process shares: the daemon, the test guest
// and a golden domain booted once, whose disk and snapshots every rig's
// domains copy.
var lab struct {
	once   sync.Once
	err    error
	d      *daemon
	guest  string
	golden golden
}

// golden is the test guest booted once under libvirt and snapshotted with
// its agent answering: ready and other hold the same running guest.
type golden struct {
	disk  string
	snaps []string // their descriptions, ready first
}

const goldenName = "sbxgolden"

func theLab(t testing.TB) *daemon {
	t.Helper()
	needLibvirt(t)
	lab.once.Do(func() {
		out, err := exec.Command("../qemu/guest/build.sh").CombinedOutput()
		if err != nil {
			lab.err = fmt.Errorf("plugins/qemu/guest/build.sh: %v\n%s", err, out)
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		lab.guest = lines[len(lines)-1]
		if lab.d, lab.err = startDaemon(); lab.err != nil {
			return
		}
		lab.golden, lab.err = bootGolden(lab.d, lab.guest)
	})
	require.NoError(t, lab.err)
	return lab.d
}

func TestMain(m *testing.M) {
	code := m.Run()
	if lab.d != nil {
		lab.d.stop()
	}
	_ = programs.Close()
	os.Exit(code)
}

// domainSpec is what a domain of the test guest is made of.
type domainSpec struct {
	name, uuid, disk, console string
	acpi                      string // the guest's sandbox.acpi flag
	pm                        bool   // the guest may suspend to RAM
}

// xml is the domain's definition: the test guest booted from its kernel
// and initramfs, a qcow2 disk for its snapshots, the agent's channel. It
// has no <cpu>: the default model avoids libvirt's check of the guest's
// CPU at every start.
func (s domainSpec) xml(guest string) string {
	acpi := s.acpi
	if acpi == "" {
		acpi = "honour"
	}
	pm := ""
	if s.pm {
		pm = `<pm><suspend-to-mem enabled='yes'/><suspend-to-disk enabled='no'/></pm>`
	}
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s/vmlinuz</kernel>
    <initrd>%s/initramfs.cpio.gz</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet sandbox.acpi=%s</cmdline>
  </os>
  <features><acpi/></features>%s
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>`, s.name, s.uuid, guest, guest, acpi, pm, s.disk, s.console)
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// bootDomain defines the domain and starts it until its agent answers.
func bootDomain(l *golibvirt.Libvirt, spec domainSpec, guest string) (golibvirt.Domain, error) {
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", spec.disk, "64M").CombinedOutput(); err != nil {
		return golibvirt.Domain{}, fmt.Errorf("qemu-img create: %v: %s", err, out)
	}
	dom, err := l.DomainDefineXML(spec.xml(guest))
	if err != nil {
		return dom, err
	}
	if _, err := l.DomainCreateWithFlags(dom, 0); err != nil {
		return dom, err
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		_, err := l.QEMUDomainAgentCommand(dom, `{"execute":"guest-ping"}`, 5, 0)
		if err == nil {
			return dom, nil
		}
		if time.Now().After(deadline) {
			console, _ := os.ReadFile(spec.console)
			return dom, fmt.Errorf("the guest of %s did not answer within 3m: %v; console:\n%s", spec.name, err, console)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// bootGolden boots the golden domain and takes its snapshots.
func bootGolden(d *daemon, guest string) (golden, error) {
	l, err := d.connect()
	if err != nil {
		return golden{}, err
	}
	defer l.Disconnect()
	spec := domainSpec{name: goldenName, uuid: newUUID(), disk: filepath.Join(d.dir, "golden.qcow2"), console: filepath.Join(d.dir, "golden.console")}
	dom, err := bootDomain(l, spec, guest)
	if err != nil {
		return golden{}, err
	}
	g := golden{disk: spec.disk}
	for _, name := range []string{"ready", "other"} {
		snap, err := l.DomainSnapshotCreateXML(dom, "<domainsnapshot><name>"+name+"</name></domainsnapshot>", 0)
		if err != nil {
			return g, fmt.Errorf("snapshot %s of the golden domain: %w", name, err)
		}
		desc, err := l.DomainSnapshotGetXMLDesc(snap, uint32(golibvirt.DomainSnapshotXMLSecure))
		if err != nil {
			return g, err
		}
		// The rigs' copies are made of these: the golden's own names,
		// UUID and files give way to theirs.
		desc = strings.ReplaceAll(desc, spec.uuid, "@UUID@")
		desc = strings.ReplaceAll(desc, spec.disk, "@DISK@")
		desc = strings.ReplaceAll(desc, spec.console, "@CONSOLE@")
		desc = strings.ReplaceAll(desc, goldenName, "@NAME@")
		g.snaps = append(g.snaps, desc)
	}
	if err := l.DomainDestroyFlags(dom, 0); err != nil {
		return g, err
	}
	return g, nil
}

// programs are the executables the tests run, built once per process.
var programs binaries

type binaries struct{ plugintest.Cache }

func (b *binaries) path(t testing.TB, pkg string) string {
	t.Helper()
	p, err := b.Path(pkg)
	require.NoError(t, err)
	return p
}

// vmSpec is one VM of a rig.
type vmSpec struct {
	name string
	kind vmKind
}

type vmKind int

const (
	// atReady: a copy of the golden domain, at its snapshot ready (and
	// other).
	atReady vmKind = iota
	// holdsAfterStop: atReady, and after every stop another process holds
	// its disk for four seconds (the libvirt hook of daemon_test.go).
	holdsAfterStop
	// slowRevert: the slow-restore disk of the test guest with its
	// snapshot "data" of an off domain, whose revert takes seconds.
	slowRevert
	// pmSuspended: booted and suspended to RAM by its guest: a state the
	// contract has no word for.
	pmSuspended
)

// rig is a set of domains of the test guest, each with its own disk, and
// the configuration that names them.
type rig struct {
	dir    string
	file   string // config.toml
	config string // its plugin tables and [vms.NAME] tables
	prefix string // of its domains' names: rigs share the daemon
	vms    []vmSpec
	d      *daemon
}

var rigs atomic.Int32

// newRig makes the domains and writes the configuration. When t ends,
// its domains are destroyed and undefined.
func newRig(t testing.TB, vms ...vmSpec) *rig {
	t.Helper()
	d := theLab(t)
	dir, err := os.MkdirTemp("", "slr")
	require.NoError(t, err)
	r := &rig{dir: dir, file: filepath.Join(dir, "config.toml"), prefix: fmt.Sprintf("r%d-", rigs.Add(1)), vms: vms, d: d}
	l, err := d.connect()
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			r.report(t)
		}
		r.remove(l)
		_ = l.Disconnect()
		_ = os.RemoveAll(dir)
	})
	var wg sync.WaitGroup
	errs := make([]error, len(vms))
	for i, v := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.make(l, v)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[plugins.libvirt.config]\nuri = \"qemu:///system\"\nsocket = %q\n", d.socket)
	fmt.Fprintf(&b, "[plugins.libvirt.config.timeouts]\nunlock = \"30s\"\n")
	for _, v := range vms {
		fmt.Fprintf(&b, "[plugins.libvirt.config.vms.%s]\ndomain = %q\n", v.name, r.domain(v.name))
	}
	r.config = b.String()
	require.NoError(t, os.WriteFile(r.file, []byte(r.config), 0o644))
	return r
}

// domain is the name of VM vm's domain.
func (r *rig) domain(vm string) string { return r.prefix + vm }

// disk is VM vm's disk image.
func (r *rig) disk(vm string) string { return filepath.Join(r.dir, vm+".qcow2") }

// make makes one VM's domain.
func (r *rig) make(l *golibvirt.Libvirt, v vmSpec) error {
	spec := domainSpec{name: r.domain(v.name), uuid: newUUID(), disk: r.disk(v.name), console: filepath.Join(r.dir, v.name+".console")}
	switch v.kind {
	case pmSuspended:
		spec.pm = true
		dom, err := bootDomain(l, spec, lab.guest)
		if err != nil {
			return err
		}
		return l.DomainPmSuspendForDuration(dom, 0, 0, 0)
	case slowRevert:
		if err := copyFile(filepath.Join(lab.guest, "slow.qcow2"), spec.disk); err != nil {
			return err
		}
		dom, err := l.DomainDefineXML(spec.xml(lab.guest))
		if err != nil {
			return err
		}
		// qemu-img took the disk's snapshot "data"; libvirt is told of it.
		_, err = l.DomainSnapshotCreateXML(dom, "<domainsnapshot><name>data</name><state>shutoff</state><creationTime>1</creationTime>"+
			"<memory snapshot='no'/><disks><disk name='vda' snapshot='internal'/></disks>"+spec.xml(lab.guest)+"</domainsnapshot>",
			uint32(golibvirt.DomainSnapshotCreateRedefine|golibvirt.DomainSnapshotCreateCurrent))
		return err
	}
	if err := copyFile(lab.golden.disk, spec.disk); err != nil {
		return err
	}
	dom, err := l.DomainDefineXML(spec.xml(lab.guest))
	if err != nil {
		return err
	}
	fill := strings.NewReplacer("@UUID@", spec.uuid, "@DISK@", spec.disk, "@CONSOLE@", spec.console, "@NAME@", spec.name)
	for _, desc := range lab.golden.snaps {
		if _, err := l.DomainSnapshotCreateXML(dom, fill.Replace(desc), uint32(golibvirt.DomainSnapshotCreateRedefine)); err != nil {
			return fmt.Errorf("redefine a snapshot of %s: %w", spec.name, err)
		}
	}
	if _, err := l.DomainSnapshotCreateXML(dom, fill.Replace(lab.golden.snaps[0]),
		uint32(golibvirt.DomainSnapshotCreateRedefine|golibvirt.DomainSnapshotCreateCurrent)); err != nil {
		return err
	}
	if v.kind == holdsAfterStop {
		f, err := os.OpenFile(filepath.Join(r.d.dir, "hold"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = fmt.Fprintf(f, "%s %s 4000\n", spec.name, spec.disk)
		return err
	}
	return nil
}

// report logs the end of the rig's consoles and of libvirtd's log, for a
// test that failed.
func (r *rig) report(t testing.TB) {
	for _, v := range r.vms {
		if out, err := os.ReadFile(filepath.Join(r.dir, v.name+".console")); err == nil {
			t.Logf("console of %s:\n%s", v.name, tail(string(out), 20))
		}
	}
	if out, err := os.ReadFile(filepath.Join(r.d.dir, "libvirtd.log")); err == nil {
		t.Logf("libvirtd's log:\n%s", tail(string(out), 30))
	}
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// remove destroys and undefines the rig's domains.
func (r *rig) remove(l *golibvirt.Libvirt) {
	for _, v := range r.vms {
		dom, err := l.DomainLookupByName(r.domain(v.name))
		if err != nil {
			continue
		}
		_ = l.DomainDestroyFlags(dom, 0)
		_ = l.DomainUndefineFlags(dom, golibvirt.DomainUndefineSnapshotsMetadata|golibvirt.DomainUndefineManagedSave)
	}
}

// connector launches the plugin binary through the plugin host on the
// rig's configuration, logging into logs.
func (r *rig) connector(t testing.TB, logs io.Writer) conformance.Connector {
	return r.connectorOn(t, r.config, logs)
}

// connectorOn is connector on another configuration of the rig's domains.
func (r *rig) connectorOn(t testing.TB, config string, logs io.Writer) conformance.Connector {
	return host.Connect(host.Launch{
		Name:       "libvirt",
		Path:       programs.path(t, pluginPkg),
		Config:     config,
		ConfigFile: r.file,
		Logger:     hclog.New(&hclog.LoggerOptions{Name: "sandbox", Level: hclog.Debug, Output: logs}),
	})
}

// driver connects to the plugin for t.
func (r *rig) driver(t testing.TB) hypervisor.Driver {
	t.Helper()
	return r.driverOn(t, r.config)
}

// driverOn connects to a plugin of its own, on config, for t.
func (r *rig) driverOn(t testing.TB, config string) hypervisor.Driver {
	t.Helper()
	d, closeFn, err := r.connectorOn(t, config, io.Discard)(context.Background())
	require.NoError(t, err)
	t.Cleanup(closeFn)
	return d
}

func copyFile(src, dst string) error {
	out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp %s: %v: %s", src, err, out)
	}
	return nil
}

// waitFor polls the VM's status until cond holds, for at most within.
func waitFor(t testing.TB, d hypervisor.Driver, vm string, within time.Duration, what string, cond func(hypervisor.Status) bool) hypervisor.Status {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := d.Status(context.Background(), vm)
		require.NoError(t, err)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM %s did not get %s within %s: %+v", vm, what, within, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
