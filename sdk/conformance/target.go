package conformance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
)

// Target is the driver under test and the VMs it may use. Only Connect and
// VM are required; every other VM unlocks the checks that need it, and the
// checks that need one not given are skipped with the reason.
type Target struct {
	// Connect reaches the driver: Plugin, InProcess or Connected.
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
}

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
	return g
}

// Connector reaches the driver under test. The suite calls it once per run
// and calls the returned close function when the run ends.
type Connector func(ctx context.Context) (d hypervisor.Driver, close func(), err error)

// PluginBinary is a plugin executable and the configuration it is launched
// with, as a [plugins.NAME] table and the file around it would give them.
type PluginBinary struct {
	// Name is the plugin's name; the plugin decodes the table
	// [plugins.NAME.config] of Config. Default "plugin".
	Name string
	// Path is the executable.
	Path string
	// Args and Env are as in the [plugins.NAME] table: extra arguments,
	// and the environment beyond the minimal one ("NAME" passes the
	// variable through, "NAME=value" sets it).
	Args []string
	Env  []string
	// Config is the configuration file's text.
	Config string
	// ConfigFile is the path Config is said to come from: the plugin
	// resolves its relative paths against its directory and names it in
	// errors. Default: config.toml in the working directory.
	ConfigFile string
	// Logger receives the host's and the plugin's log; nil discards it.
	Logger hclog.Logger
}

// Plugin launches a plugin binary through the plugin host, as the CLI does:
// minimal environment, protocol negotiation, the configuration sent over
// the wire.
func Plugin(p PluginBinary) Connector {
	return func(ctx context.Context) (hypervisor.Driver, func(), error) {
		name := p.Name
		if name == "" {
			name = "plugin"
		}
		file := p.ConfigFile
		if file == "" {
			wd, err := os.Getwd()
			if err != nil {
				return nil, nil, err
			}
			file = filepath.Join(wd, "config.toml")
		}
		h := host.New(host.Options{
			Plugins: map[string]host.PluginConfig{name: {Path: p.Path, Args: p.Args, Env: p.Env}},
			File:    file,
			Data:    []byte(p.Config),
			Logger:  p.Logger,
		})
		pl, err := h.Plugin(name)
		if err == nil {
			// Launch now, so that a plugin that cannot start fails the run
			// once instead of every check.
			_, err = pl.Info(ctx)
		}
		if err != nil {
			h.Close()
			return nil, nil, err
		}
		return pl, h.Close, nil
	}
}

// InProcess serves the driver built by factory inside the test process,
// over a real gRPC connection (sdk.ServeInProcess), so that the wire
// adapters are exercised as with a plugin. config is the text of a
// configuration file holding the table [plugins.NAME.config]; relative
// paths in it resolve against the working directory.
func InProcess(name string, factory sdk.Factory, config string, opts ...sdk.ServeOption) Connector {
	return func(ctx context.Context) (hypervisor.Driver, func(), error) {
		wd, err := os.Getwd()
		if err != nil {
			return nil, nil, err
		}
		cfg := sdk.ConfigFromTOML(name, filepath.Join(wd, "config.toml"), []byte(config))
		p, err := sdk.ServeInProcess(ctx, factory, cfg, nil, opts...)
		if err != nil {
			return nil, nil, fmt.Errorf("serve %s in process: %w", name, err)
		}
		return p, func() { _ = p.Close() }, nil
	}
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
