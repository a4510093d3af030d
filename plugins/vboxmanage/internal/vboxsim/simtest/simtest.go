// Package simtest builds the VBoxManage simulator for tests and sets up
// worlds for it.
package simtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

const pkg = "github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim/cmd/vboxsim"

// built holds the simulator, built once per test process. Static, as
// plugintest builds it: the driver runs the simulator thousands of times
// in a test, and the dynamic loader would nearly double each start.
var built plugintest.Cache

// Build compiles the simulator once per test process and returns the
// executable's path. Call Cleanup from TestMain to remove it.
func Build(tb testing.TB) string {
	tb.Helper()
	bin, err := built.Path(pkg)
	if err != nil {
		tb.Fatal("building the simulator: " + err.Error())
	}
	return bin
}

// Cleanup removes what Build compiled.
func Cleanup() { _ = built.Close() }

// Sim is one simulated host: an executable named like VBoxManage on that
// host and a world in its own VBOX_USER_HOME.
type Sim struct {
	// Bin is the VBoxManage to run ("VBoxManage.exe" for a Windows host).
	Bin string
	// Home is the world's directory, the VBOX_USER_HOME to run it with.
	Home string
}

// New sets up a world with cfg and vms in a fresh directory.
func New(tb testing.TB, cfg vboxsim.Config, vms ...*vboxsim.VM) *Sim {
	tb.Helper()
	built := Build(tb)
	dir := tb.TempDir()
	name := "VBoxManage"
	if cfg.Host == "windows" {
		name = "VBoxManage.exe"
	}
	bin := filepath.Join(dir, "bin", name)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.Symlink(built, bin); err != nil {
		tb.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	if err := vboxsim.Create(home, &vboxsim.World{Config: cfg, VMs: vms}); err != nil {
		tb.Fatal(err)
	}
	return &Sim{Bin: bin, Home: home}
}

// Run runs the simulator once, as a process.
func (s *Sim) Run(args ...string) (stdout, stderr string, code int) {
	cmd := exec.Command(s.Bin, args...)
	cmd.Env = append(os.Environ(), "VBOX_USER_HOME="+s.Home)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		return o.String(), e.String() + err.Error(), -1
	}
	return o.String(), e.String(), code
}

// Update changes the world, e.g. to inject a fault mid-test.
func (s *Sim) Update(tb testing.TB, fn func(w *vboxsim.World)) {
	tb.Helper()
	if err := vboxsim.Update(s.Home, func(w *vboxsim.World) error { fn(w); return nil }); err != nil {
		tb.Fatal(err)
	}
}

// VM returns the VM named ref as of now.
func (s *Sim) VM(tb testing.TB, ref string) vboxsim.VM {
	tb.Helper()
	w, err := vboxsim.Load(s.Home)
	if err != nil {
		tb.Fatal(err)
	}
	vm := w.Find(ref)
	if vm == nil {
		tb.Fatalf("no VM %q in the simulated world", ref)
	}
	return *vm
}

// Invocations returns every invocation so far.
func (s *Sim) Invocations(tb testing.TB) []vboxsim.Invocation {
	tb.Helper()
	inv, err := vboxsim.Invocations(s.Home)
	if err != nil {
		tb.Fatal(err)
	}
	return inv
}
