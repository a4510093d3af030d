package vboxmanage_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim/simtest"
	"github.com/sandboxhq/sandbox/sdk/conformance"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The conformance suite against the plugin binary, launched by the plugin
// host as the CLI launches it, on simulated installations.

// suiteWorld is a simulated installation with a VM for every role of the
// conformance target.
func suiteWorld(t *testing.T, p profile) *simtest.Sim {
	t.Helper()
	c := vboxsim.Config{Version: p.version, Host: p.host}
	c.Timing.Start = vboxsim.Duration(50 * time.Millisecond)
	c.Timing.ACPIShutdown = vboxsim.Duration(200 * time.Millisecond)
	c.Timing.Unlock = vboxsim.Duration(200 * time.Millisecond)
	c.Timing.GuestReady = vboxsim.Duration(100 * time.Millisecond)
	// A VM process that never exits by itself: off and locked after every
	// stop until Unlock or Cleanup kills it.
	lock := guestVM("lock", "00000000-0000-4000-8000-000000000003")
	never := vboxsim.Duration(-1)
	lock.Unlock = &never
	// A restore that takes well over the suite's margin.
	slow := guestVM("slow", "00000000-0000-4000-8000-000000000004")
	long := vboxsim.Duration(2 * time.Second)
	slow.Restore = &long
	// "settingup" has no counterpart in the contract.
	odd := vboxsim.NewVM("odd", "00000000-0000-4000-8000-0000000000ff")
	odd.State = "settingup"
	// A second snapshot to restore to, older than the current one.
	subject := guestVM("subject", "00000000-0000-4000-8000-000000000001")
	subject.Snapshots = append([]vboxsim.Snap{{Name: "base", UUID: "00000000-0000-4000-8000-00000000b001"}}, subject.Snapshots...)
	subject.Snapshots[1].Parent = "00000000-0000-4000-8000-00000000b001"
	peer := guestVM("peer", "00000000-0000-4000-8000-000000000002")
	// Restores that wait rather than compute, so that the time of two at
	// once says whether they overlap, however busy the CPU is.
	overlap := vboxsim.Duration(100 * time.Millisecond)
	subject.Restore, peer.Restore = &overlap, &overlap
	return simtest.New(t, c, subject, peer, lock, slow, odd)
}

// suiteTarget launches the plugin binary on sim's installation.
func suiteTarget(t *testing.T, sim *simtest.Sim, logs *plugintest.Buffer) conformance.Target {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "guest-password"), []byte(guestPW), 0o600))
	config := fmt.Sprintf(`[plugins.vbox.config]
path = %q
user_home = %q
[plugins.vbox.config.retry]
locked = "1s"
[plugins.vbox.config.unlock]
grace = "100ms"
[plugins.vbox.config.guest]
username = %q
password_file = "guest-password"
`, sim.Bin, sim.Home, userName)
	return conformance.Target{
		Connect: host.Connect(host.Launch{
			Name:       "vbox",
			Path:       programs.path(t, pluginPkg),
			Config:     config,
			ConfigFile: filepath.Join(dir, "config.toml"),
			Logger:     hclog.New(&hclog.LoggerOptions{Name: "sandbox", Level: hclog.Debug, Output: logs}),
		}),
		VM:            "subject",
		Snapshot:      "clean",
		OtherSnapshot: "base",
		PeerVM:        "peer",
		LockVM:        "lock",
		DeadlineVM:    "slow",
		UnmappedVM:    "odd",
		Guest:         conformance.Guest{Sleep: []string{"sleep", "30"}},
		Timing:        conformance.Timing{Settle: 10 * time.Second, ACPI: 2 * time.Second, Margin: time.Second},
	}
}

// quickChecks are the checks run on every profile besides the full one:
// those whose outcome depends on VBoxManage's texts, line ends and
// version (error classification, the session line, emergencystop, guest
// exit codes). The deadline and concurrency checks exercise the driver's
// own machinery, which is the same whatever VBoxManage prints, and take
// most of the suite's time; they run on the full profile only.
func quickCheck(name string) bool {
	return !strings.HasPrefix(name, "Deadlines/") && !strings.HasPrefix(name, "Concurrency/")
}

// successPaths are quick checks that only drive operations through their
// success paths: restores, starts, stops and guest copies and commands
// that work. TestEveryOperation runs each of those on every profile and
// checks what reached VBoxManage, so -short leaves them out on the
// profiles besides the full one (where they were 45 % of the simulator's
// runs), and keeps the checks of VBoxManage's error texts, the session
// line, emergencystop and guest exit codes.
var successPaths = []string{
	"Restore/CurrentSnapshot", "Restore/NamedSnapshot", "Restore/OtherSnapshot", "Restore/Twice",
	"Start/ReachesRunning", "Start/RunningIsNoOp",
	"Stop/ACPI", "Stop/Ladder", "Stop/OffLikeIsNoOp", "Stop/PowerOff",
	"Cleanup/CleanVMIsNoOp", "Cleanup/RunningVM",
	"Guest/CopyRoundTrip", "Guest/ExecOutput", "Guest/OutputBounded",
}

// otherProfileCheck selects the checks run on the profiles besides the
// full one.
func otherProfileCheck(name string) bool {
	return quickCheck(name) && !(testing.Short() && slices.Contains(successPaths, name))
}

// Each name in successPaths is one of the suite's checks: a check renamed
// in the suite would otherwise run again in -short, unnoticed.
func TestSuccessPathsNameChecks(t *testing.T) {
	known := map[string]bool{}
	for _, c := range conformance.Checks() {
		known[c.Name] = true
	}
	for _, name := range successPaths {
		assert.True(t, known[name], "successPaths names %q, which is no check of the suite", name)
		assert.True(t, quickCheck(name), "successPaths names %q, which runs on the full profile only anyway", name)
	}
}

// TestConformance runs the whole suite through the plugin on VirtualBox
// 7.0 (Linux), and the quick checks on 5.1 (Linux), 6.1 (Windows) and 7.1
// (macOS). The runs spend their time waiting for simulated VMs, so the
// quick ones run in goroutines beside the full one rather than as
// parallel subtests, which go test would run only GOMAXPROCS at a time;
// their results are replayed as subtests afterwards. Every check passes
// except those of the watch capability, which the driver does not declare,
// and the one for undeclared guest operations, which it declares all: the
// suite skips them.
func TestConformance(t *testing.T) {
	t.Parallel()
	type quick struct {
		p    profile
		logs *plugintest.Buffer
		rep  *conformance.Report
		err  error
	}
	var runs []*quick
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, p := range profiles {
		if p.name == fullProfile {
			continue
		}
		q := &quick{p: p, logs: &plugintest.Buffer{}}
		target := suiteTarget(t, suiteWorld(t, p), q.logs)
		runs = append(runs, q)
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.rep, q.err = conformance.Collect(ctx, target, conformance.Options{Match: otherProfileCheck})
		}()
	}
	t.Run(fullProfile, func(t *testing.T) {
		logs := &plugintest.Buffer{}
		for _, p := range profiles {
			if p.name == fullProfile {
				conformance.Run(t, suiteTarget(t, suiteWorld(t, p), logs))
			}
		}
		if t.Failed() {
			t.Logf("log of the host and the plugin:\n%s", logs)
		}
	})
	wg.Wait()
	for _, q := range runs {
		t.Run(q.p.name, func(t *testing.T) {
			require.NoError(t, q.err)
			reportAsSubtests(t, q.rep)
			assert.Empty(t, q.rep.Restore, "the suite put the VMs back")
			for _, r := range q.rep.Results {
				if r.Outcome == conformance.Skip {
					assert.True(t, strings.HasPrefix(r.Check, "Watch/") || r.Check == "Capabilities/UndeclaredGuestOnRunningVM",
						"only the checks of the watch capability, which the driver does not declare, and of undeclared guest operations, which it declares all, are skipped: %s (%s)", r.Check, r.Message)
				}
			}
			if t.Failed() {
				t.Logf("log of the host and the plugin:\n%s", q.logs)
			}
		})
	}
}

// fullProfile is the profile the whole suite runs on.
const fullProfile = "7.0-linux"

// reportAsSubtests replays a collected run as subtests named like
// conformance.Run's, so that a failure or a skip reads the same either
// way.
func reportAsSubtests(t *testing.T, rep *conformance.Report) {
	t.Helper()
	for _, r := range rep.Results {
		t.Run(r.Check, func(t *testing.T) {
			switch r.Outcome {
			case conformance.Skip:
				t.Skip(r.Message)
			case conformance.Fail:
				for _, l := range r.Log {
					t.Log(l)
				}
				t.Errorf("%s: %s", r.Clause, r.Message)
			}
		})
	}
	t.Logf("driver %s %s on %s: %d passed, %d skipped, %d failed", rep.Driver.Name, rep.Driver.Version,
		rep.Driver.Hypervisor, rep.Count(conformance.Pass), rep.Count(conformance.Skip), rep.Count(conformance.Fail))
}
