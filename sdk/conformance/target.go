package conformance

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/configfile"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
)

// Target is the driver under test and the VMs it may use. Only Connect and
// VM are required; every other VM unlocks the checks that need it, and the
// checks that need one not given are skipped with the reason.
type Target struct {
	// Connect reaches the driver: InProcess, Connected, or a built plugin
	// through host.Connect.
	Connect Connector
	// VM is the VM most checks drive. It is started, stopped and restored
	// to Snapshot many times, so it must be disposable.
	VM string
	// Snapshot is a snapshot of VM to restore to. Empty means the snapshot
	// VM is at when the run begins; a VM without any skips the snapshot
	// checks.
	Snapshot string
	// OtherSnapshot is a second snapshot of VM, other than Snapshot, for
	// telling a restore of the named snapshot from one of the current one
	// (§7.3). Guest operations, where the driver has them, must work in the
	// VM at both.
	OtherSnapshot string
	// PeerVM is a second disposable VM, for operations on two VMs at once
	// (§13). It is restored to the snapshot it is at when the run begins.
	PeerVM string
	// LockVM is a disposable VM whose session lock outlives its process:
	// after a stop it stays off and locked until Unlock (or Cleanup)
	// releases it. Real hypervisors rarely do that on demand; the fake does
	// with faults.stale_lock_after_stop.
	LockVM string
	// DeadlineVM is a disposable VM whose restore to its current snapshot
	// takes well over Timing.Margin, so that a restore given a short
	// deadline must be cut short rather than finish (§12). The fake does
	// that with a long timing.restore.
	DeadlineVM string
	// UnmappedVM is a VM in a state the driver has no word for, which it
	// must report as unknown (§3.2). The suite only reads its status.
	UnmappedVM string
	// Guest says how to run commands in the guest of VM.
	Guest Guest
	// Timing bounds the waits; zero fields take the defaults.
	Timing Timing
	// Model bounds the exploration of the contract's model that follows
	// the checks: random sequences of operations held against what the
	// contract allows (docs/conformance.md, "The model"). The zero value
	// leaves it out.
	Model Exploration
}

// Guest describes the guest OS of the target VM for the guest checks (§9).
// The defaults suit a POSIX guest.
type Guest struct {
	// Dir is a writable guest directory the suite copies its files to;
	// default "/tmp".
	Dir string
	// Cat is a program and leading arguments that print a file given as
	// the last argument to stdout, and fail with a message on stderr when
	// it does not exist; default ["cat"]. A Windows guest could use
	// ["cmd.exe", "/c", "type"].
	Cat []string
	// Sleep is a command that runs for at least a minute, to be cut short
	// by a timeout; default ["sleep", "60"].
	Sleep []string
	// Flood is a command that writes at least FloodSize bytes to stdout
	// and exits, the guest flooding its driver (§9.5); default ["dd",
	// "if=/dev/zero", "bs=65536", "count=16"], 1 MiB of zeros.
	Flood []string
}

// FloodSize is how much the Flood command writes, at least. The suite asks
// for FloodLimit of it, a sixteenth: a driver that keeps it all fails on
// the size, with the check's memory no more than the flood's. The flood is
// no larger because no driver can ask a guest agent for less of a
// command's output: it must read the whole reply, and libvirtd already
// fails replies of a few MiB.
const (
	FloodSize  = 1 << 20
	FloodLimit = 64 << 10
)

// Timing bounds the suite's waits. Real hypervisors need the defaults; a
// fast fake can use much shorter ones.
type Timing struct {
	// Settle bounds every wait for a state: a start to reach running, a
	// power-off to reach off, a lock to go, a guest to accept commands.
	// Default 60s.
	Settle time.Duration
	// ACPI is how long a guest gets to obey the power button before the
	// stop ladder climbs to the next rung. Default 30s.
	ACPI time.Duration
	// Deadline is the short deadline of the deadline checks (§12). Default
	// 50ms.
	Deadline time.Duration
	// Margin is how much later than its deadline an operation may answer,
	// and how soon after giving up it must have let go of the VM. Default
	// 1s.
	Margin time.Duration
}

func (t Timing) withDefaults() Timing {
	if t.Settle <= 0 {
		t.Settle = 60 * time.Second
	}
	if t.ACPI <= 0 {
		t.ACPI = 30 * time.Second
	}
	if t.Deadline <= 0 {
		t.Deadline = 50 * time.Millisecond
	}
	if t.Margin <= 0 {
		t.Margin = time.Second
	}
	return t
}

func (g Guest) withDefaults() Guest {
	if g.Dir == "" {
		g.Dir = "/tmp"
	}
	if len(g.Cat) == 0 {
		g.Cat = []string{"cat"}
	}
	if len(g.Sleep) == 0 {
		g.Sleep = []string{"sleep", "60"}
	}
	if len(g.Flood) == 0 {
		g.Flood = []string{"dd", "if=/dev/zero", "bs=65536", "count=16"}
	}
	return g
}

// Connector reaches the driver under test. The suite calls it once per run
// and calls the returned close function when the run ends. InProcess and
// Connected make one; host.Connect launches a built plugin executable the
// way the CLI does.
type Connector func(ctx context.Context) (d hypervisor.Driver, close func(), err error)

// InProcess serves the driver built by factory inside the test process,
// over a real gRPC connection (sdk.ServeInProcess), so that the wire
// adapters are exercised as with a plugin.
//
// config is what an operator's config.toml would hold for the plugin: its
// text, with the driver's settings in the table [plugins.NAME.config] (and
// the tables below it), NAME being name. Other tables are ignored; empty
// text leaves the driver its defaults. Errors name it "InProcess config",
// with lines counted in the string, and relative paths in it resolve
// against the working directory (the package's directory under go test).
// Text that has no [plugins.NAME.config] table is refused with what it has
// instead, before the factory runs.
func InProcess(name string, factory sdk.Factory, config string, opts ...sdk.ServeOption) Connector {
	return func(ctx context.Context) (hypervisor.Driver, func(), error) {
		fail := func(err error) error { return fmt.Errorf("conformance.InProcess(%q): %w", name, err) }
		if err := findTable(name, config); err != nil {
			return nil, nil, fail(err)
		}
		wd, err := os.Getwd()
		if err != nil {
			return nil, nil, fail(err)
		}
		cfg := sdk.Config{Plugin: name, File: inProcessConfig, Dir: wd, Table: []string{"plugins", name, "config"}, Data: []byte(config)}
		p, err := sdk.ServeInProcess(ctx, factory, cfg, nil, opts...)
		if err != nil {
			var he *hypervisor.Error
			if errors.As(err, &he) && he.Op == hypervisor.OpConfigure && he.Message != "" {
				// The driver's own words, e.g. "InProcess config:4: KEY: unknown key".
				return nil, nil, fail(fmt.Errorf("the driver rejected its configuration: %s", he.Message))
			}
			return nil, nil, fail(err)
		}
		return p, func() { _ = p.Close() }, nil
	}
}

// inProcessConfig names InProcess's config string in errors, where a
// configuration file's name would be.
const inProcessConfig = "InProcess config"

// findTable checks that config, the text of InProcess, has the driver's
// table [plugins.NAME.config], or no setting at all, and otherwise says
// what it has instead: a table for another name, the table's keys without
// its header.
func findTable(name, config string) error {
	if name == "" {
		return errors.New("the plugin's name is empty: the driver's settings are read from [plugins.NAME.config]")
	}
	var doc map[string]any
	if err := (configfile.Document{File: inProcessConfig, Data: []byte(config)}).Decode(&doc, configfile.Ignore("*")); err != nil {
		return fmt.Errorf("the config string is not valid TOML: %w", err)
	}
	if len(doc) == 0 {
		return nil
	}
	plugins, _ := doc["plugins"].(map[string]any)
	if p, ok := plugins[name].(map[string]any); ok {
		if _, ok := p["config"].(map[string]any); ok {
			return nil
		}
	}
	var has, bare []string
	for _, k := range slices.Sorted(maps.Keys(doc)) {
		switch _, table := doc[k].(map[string]any); {
		case !table:
			bare = append(bare, k)
		case k == "plugins":
			for _, p := range slices.Sorted(maps.Keys(plugins)) {
				if pt, _ := plugins[p].(map[string]any); pt["config"] != nil {
					has = append(has, "[plugins."+p+".config]")
				} else {
					has = append(has, "[plugins."+p+"] with no config table")
				}
			}
		default:
			has = append(has, "["+k+"]")
		}
	}
	if len(bare) > 0 {
		has = append([]string{"keys outside any table (" + strings.Join(bare, ", ") + ")"}, has...)
	}
	return fmt.Errorf("the config string has no [plugins.%s.config] table, which holds the driver's settings; it has %s. "+
		"It is a config.toml's text: put the driver's settings under a [plugins.%s.config] header", name, strings.Join(has, ", "), name)
}

// Connected uses a driver the caller already reached, such as a
// host.Plugin; the suite leaves closing it to the caller.
func Connected(d hypervisor.Driver) Connector {
	return func(context.Context) (hypervisor.Driver, func(), error) {
		if d == nil {
			return nil, nil, errors.New("conformance: Connected(nil)")
		}
		return d, func() {}, nil
	}
}
