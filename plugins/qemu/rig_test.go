package qemu_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/conformance"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The tests in this package that need QEMU run the driver as users run
// it: the sandbox-plugin-qemu executable launched by the plugin host, on
// real QEMU VMs of the test guest that plugins/qemu/guest/build.sh builds
// from Debian's packages. Without QEMU they are skipped, and say so.

const (
	pluginPkg = "github.com/sandboxhq/sandbox/plugins/qemu/cmd/sandbox-plugin-qemu"
	cliPkg    = "github.com/sandboxhq/sandbox/cmd/sandbox"
)

// needQEMU skips t when QEMU and its tools are not installed, or fails
// it where SANDBOX_QEMU_TESTS=required says they must run (.ci/run).
func needQEMU(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("QEMU test skipped: -short (make test-short) leaves out what needs a real hypervisor")
	}
	missing := ""
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = tool
		}
	}
	if _, err := os.Stat("/usr/sbin/qemu-ga"); err != nil {
		missing = "/usr/sbin/qemu-ga"
	}
	if missing == "" {
		return
	}
	msg := fmt.Sprintf("QEMU test skipped: %s is not installed "+
		"(apt-get install --no-install-recommends qemu-system-x86 qemu-utils qemu-guest-agent busybox-static cpio; .ci/run does)", missing)
	if os.Getenv("SANDBOX_QEMU_TESTS") == "required" {
		t.Fatal(strings.Replace(msg, "skipped", "cannot run, and SANDBOX_QEMU_TESTS=required", 1))
	}
	t.Skip(msg)
}

// guest is the test guest's build directory, built (or found up to date)
// once per test process.
var guest struct {
	once sync.Once
	dir  string
	err  error
}

func guestDir(t testing.TB) string {
	t.Helper()
	needQEMU(t)
	guest.once.Do(func() {
		out, err := exec.Command("guest/build.sh").CombinedOutput()
		if err != nil {
			guest.err = fmt.Errorf("plugins/qemu/guest/build.sh: %v\n%s", err, out)
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		guest.dir = lines[len(lines)-1]
	})
	require.NoError(t, guest.err)
	return guest.dir
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

func TestMain(m *testing.M) {
	code := m.Run()
	_ = programs.Close()
	os.Exit(code)
}

// vmSpec is one VM of a rig.
type vmSpec struct {
	name     string
	disk     string // file of the guest directory copied as the VM's disk; "" for a blank one
	snapshot string
	acpi     string   // the guest's sandbox.acpi flag for a boot: honour or ignore
	extra    []string // more lines of its table
}

// guestVM is a VM of the test guest at its snapshot ready (honours the
// power button) or ready-ignore-acpi.
func guestVM(name, snapshot string, extra ...string) vmSpec {
	acpi := "honour"
	if snapshot == "ready-ignore-acpi" {
		acpi = "ignore"
	}
	return vmSpec{name: name, disk: "disk.qcow2", snapshot: snapshot, acpi: acpi, extra: extra}
}

// rig is a configuration of VMs of the test guest, each with its own
// copy of a disk, in a fresh state directory.
type rig struct {
	dir    string // state directory; short, for the sockets
	file   string // config.toml
	config string // its text
	vms    []vmSpec
}

// newRig copies the disks and writes the configuration. When t ends,
// every QEMU process the rig's VMs still have is killed.
func newRig(t testing.TB, vms ...vmSpec) *rig {
	t.Helper()
	g := guestDir(t)
	dir, err := os.MkdirTemp("", "sq")
	require.NoError(t, err)
	r := &rig{dir: dir, file: filepath.Join(dir, "config.toml"), vms: vms}
	t.Cleanup(func() {
		r.killAll()
		_ = os.RemoveAll(dir)
	})
	var b strings.Builder
	fmt.Fprintf(&b, "[plugins.qemu.config]\nstate_dir = %q\n", filepath.Join(dir, "s"))
	fmt.Fprintf(&b, "[plugins.qemu.config.timeouts]\nmonitor = \"2s\"\n")
	for _, v := range vms {
		disk := filepath.Join(dir, v.name+".qcow2")
		if v.disk == "" {
			out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "16M").CombinedOutput()
			require.NoError(t, err, "%s", out)
		} else {
			copyFile(t, filepath.Join(g, v.disk), disk)
		}
		acpi := v.acpi
		if acpi == "" {
			acpi = "honour"
		}
		fmt.Fprintf(&b, "[plugins.qemu.config.vms.%s]\ndisk = %q\nsnapshot = %q\nkernel = %q\ninitrd = %q\nappend = %q\n",
			v.name, disk, v.snapshot, filepath.Join(g, "vmlinuz"), filepath.Join(g, "initramfs.cpio.gz"),
			"console=ttyS0 panic=-1 quiet sandbox.acpi="+acpi)
		for _, l := range v.extra {
			b.WriteString(l + "\n")
		}
	}
	r.config = b.String()
	require.NoError(t, os.WriteFile(r.file, []byte(r.config), 0o644))
	return r
}

// killAll kills whatever QEMU process a VM of the rig still has.
func (r *rig) killAll() {
	for _, v := range r.vms {
		data, err := os.ReadFile(filepath.Join(r.dir, "s", v.name, "qemu.pid"))
		if err != nil {
			continue
		}
		var pid int
		if _, err := fmt.Sscan(string(data), &pid); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// vmFile is a file of a VM's directory in the state directory.
func (r *rig) vmFile(vm, file string) string { return filepath.Join(r.dir, "s", vm, file) }

// connector launches the plugin binary through the plugin host on the
// rig's configuration, logging into logs.
func (r *rig) connector(t testing.TB, logs io.Writer) conformance.Connector {
	return host.Connect(host.Launch{
		Name:       "qemu",
		Path:       programs.path(t, pluginPkg),
		Config:     r.config,
		ConfigFile: r.file,
		Logger:     hclog.New(&hclog.LoggerOptions{Name: "sandbox", Level: hclog.Debug, Output: logs}),
	})
}

// driver connects to the plugin for t.
func (r *rig) driver(t testing.TB) hypervisor.Driver {
	t.Helper()
	d, closeFn, err := r.connector(t, io.Discard)(context.Background())
	require.NoError(t, err)
	t.Cleanup(closeFn)
	return d
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.Create(dst)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
}

// waitFor polls the VM's status until cond holds, for at most d.
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
