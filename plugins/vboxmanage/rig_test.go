package vboxmanage_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim/simtest"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

func TestMain(m *testing.M) {
	if file := os.Getenv(envHostConfig); file != "" {
		os.Exit(actAsHost(file, os.Getenv(envHostPlugin)))
	}
	flag.Parse()
	// The fault matrix's cells wait on the simulator's timings and on
	// deadlines, not on a core.
	plugintest.WaitingParallel(8)
	code := m.Run()
	simtest.Cleanup()
	_ = programs.Close()
	os.Exit(code)
}

// profile is a simulated VirtualBox installation.
type profile struct {
	name    string
	version string
	host    string
}

// profiles covers every major version and a Windows-style host.
var profiles = []profile{
	{"5.1-linux", "5.1.38r122592", "linux"},
	{"6.1-windows", "6.1.38r153438", "windows"},
	{"7.0-linux", "7.0.14r161095", "linux"},
	{"7.1-darwin", "7.1.4r165100", "darwin"},
}

const (
	vmName   = "win10-64-defender"
	vmUUID   = "93a38cd7-ef00-47aa-9868-d291d4ed5e0a"
	guestPW  = "Pa55 w0rd;$(id)'\""
	userName = "analyst"
)

// rig is a driver wired to a simulated VBoxManage: the driver in this
// process (newRig), or the plugin binary launched by the plugin host as
// the CLI launches it (newPluginRig). Tests that hold for both drive drv.
type rig struct {
	sim *simtest.Sim
	// drv is the driver under test.
	drv hypervisor.Driver
	// native is the driver when it runs in this process; nil through the
	// plugin, whose invocations are counted from the simulator's argv log.
	native *vboxmanage.Driver
	// plugin is the host's handle on the plugin process; nil in process.
	plugin *host.Plugin
	// logs is everything the driver logged, and through the plugin
	// everything the host logged too, at trace level.
	logs *plugintest.Buffer
	// tmp is the driver's temp_dir, where guest password files go.
	tmp string
	// file and config are the configuration file and its text.
	file, config string
}

// rigSetup is what the options of a rig adjust.
type rigSetup struct {
	world *vboxsim.World
	// settings are the driver's keys, dotted, with TOML values.
	settings map[string]string
	// env is the plugin's environment allow-list ([plugins.vbox] env).
	env []string
}

// rigOption adjusts the simulated world, the driver's configuration or
// the plugin's environment.
type rigOption func(*rigSetup)

func withTiming(fn func(*vboxsim.Timing)) rigOption {
	return func(s *rigSetup) { fn(&s.world.Config.Timing) }
}

func withFaults(fn func(*vboxsim.Faults)) rigOption {
	return func(s *rigSetup) { fn(&s.world.Config.Faults) }
}

func withVMs(vms ...*vboxsim.VM) rigOption {
	return func(s *rigSetup) { s.world.VMs = vms }
}

// withSetting sets one key of the driver's table; an empty value removes it.
func withSetting(key, value string) rigOption {
	return func(s *rigSetup) {
		if value == "" {
			delete(s.settings, key)
			return
		}
		s.settings[key] = value
	}
}

// withPluginEnv adds entries to the plugin's environment allow-list, as
// the env key of [plugins.vbox] does; it matters only through the plugin.
func withPluginEnv(env ...string) rigOption {
	return func(s *rigSetup) { s.env = append(s.env, env...) }
}

func guestVM(name, uuid string) *vboxsim.VM {
	vm := vboxsim.NewVM(name, uuid)
	vm.GuestUsers[userName] = guestPW
	return vm
}

// prepare sets up a simulated installation for profile p and writes the
// driver's configuration file; the constructors then connect a driver.
func prepare(t testing.TB, p profile, opts ...rigOption) (*rig, []string) {
	t.Helper()
	setup := &rigSetup{
		world: &vboxsim.World{
			Config: vboxsim.Config{Version: p.version, Host: p.host},
			VMs:    []*vboxsim.VM{guestVM(vmName, vmUUID)},
		},
		settings: map[string]string{
			"temp_dir":            `"tmp"`,
			"retry.locked":        `"5s"`,
			"retry.initial":       `"20ms"`,
			"retry.max":           `"200ms"`,
			"unlock.grace":        `"1s"`,
			"cleanup.stop_wait":   `"1s"`,
			"guest.username":      fmt.Sprintf("%q", userName),
			"guest.password_file": `"guest-password"`,
			"guest.ready_wait":    `"5s"`,
		},
	}
	dir := t.TempDir()
	tmp := filepath.Join(dir, "tmp")
	require.NoError(t, os.Mkdir(tmp, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "guest-password"), []byte(guestPW+"\n"), 0o600))
	for _, o := range opts {
		o(setup)
	}
	sim := simtest.New(t, setup.world.Config, setup.world.VMs...)
	setup.settings["path"] = fmt.Sprintf("%q", sim.Bin)
	setup.settings["user_home"] = fmt.Sprintf("%q", sim.Home)
	keys := make([]string, 0, len(setup.settings))
	for k := range setup.settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("[plugins.vbox.config]\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, setup.settings[k])
	}
	r := &rig{sim: sim, logs: &plugintest.Buffer{}, tmp: tmp, file: filepath.Join(dir, "config.toml"), config: b.String()}
	require.NoError(t, os.WriteFile(r.file, []byte(r.config), 0o600))
	return r, setup.env
}

// newRig connects the driver in this process.
func newRig(t testing.TB, p profile, opts ...rigOption) *rig {
	t.Helper()
	r, _ := prepare(t, p, opts...)
	logger := hclog.New(&hclog.LoggerOptions{Name: "vbox", Level: hclog.Trace, Output: r.logs})
	drv, err := vboxmanage.New(sdk.ConfigFromTOML("vbox", r.file, []byte(r.config)), logger)
	require.NoError(t, err)
	r.native = drv.(*vboxmanage.Driver)
	r.drv = r.native
	return r
}

// testContext bounds a test's calls so that a driver that hangs fails the
// test instead of hanging it. No test judges this bound: it is generous
// because a busy machine runs the race-detected driver, the plugin and
// every VBoxManage many times slower than an idle one.
func testContext(t testing.TB) context.Context {
	return plugintest.Context(t, 3*time.Minute)
}

// waitStatus polls Status until ok or the deadline.
func (r *rig) waitStatus(t testing.TB, vm string, ok func(hypervisor.Status) bool) hypervisor.Status {
	t.Helper()
	ctx := testContext(t)
	for {
		st, err := r.drv.Status(ctx, vm)
		require.NoError(t, err)
		if ok(st) {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("VM %q never reached the wanted state; last %+v", vm, st)
		case <-time.After(30 * time.Millisecond):
		}
	}
}

func offAndUnlocked(st hypervisor.Status) bool {
	return st.Power.IsOff() && st.Lock == hypervisor.LockUnlocked
}

// argvCount counts recorded invocations whose arguments contain words, in order.
func (r *rig) argvCount(t testing.TB, words ...string) int {
	n := 0
	for _, inv := range r.sim.Invocations(t) {
		if containsSeq(inv.Args, words) {
			n++
		}
	}
	return n
}

func containsSeq(args, words []string) bool {
	i := 0
	for _, a := range args {
		if i < len(words) && a == words[i] {
			i++
		}
	}
	return i == len(words)
}

func newFromTOML(file, text string) (hypervisor.Driver, error) {
	return vboxmanage.New(sdk.ConfigFromTOML("vbox", file, []byte(text)), hclog.NewNullLogger())
}

func newDriverAt(t *testing.T, path string) hypervisor.Driver {
	t.Helper()
	d, err := newFromTOML("config.toml", "[plugins.vbox.config]\npath = \""+path+"\"\n")
	require.NoError(t, err)
	return d
}

// mustRunSim runs VBoxManage outside the driver, as another tool would.
func mustRunSim(t *testing.T, r *rig, args ...string) {
	t.Helper()
	_, stderr, code := r.sim.Run(args...)
	require.Equal(t, 0, code, "%v: %s", args, stderr)
}
