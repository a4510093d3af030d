package engine_test

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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/plugins/fake"
	"github.com/sandboxhq/sandbox/sdk"
)

// Every test here drives the fake hypervisor through the SDK's real gRPC
// adapters (in process), the way the CLI drives a plugin.

// fastTiming keeps each fake transition to a few tens of milliseconds.
const fastTiming = `
[timing]
start = "20ms"
acpi_shutdown = "30ms"
poweroff = "20ms"
emergency = "5ms"
restore = "20ms"
unlock_after_stop = "20ms"
guest_ready = "30ms"
`

// rig is one test's fake hypervisor, lifecycle manager and engine.
type rig struct {
	t          testing.TB
	driver     *sdk.InProcess
	journal    string
	quarantine *lifecycle.MemoryQuarantine
	manager    *lifecycle.Manager
	out        string

	mu     sync.Mutex
	events []engine.Event
}

// with is a profile and the VMs a test runs it on.
type with struct {
	profile config.Profile
	vms     []lifecycle.VM
}

// newRig serves a fake whose plugin table is table (fastTiming and a
// journal added) with n VMs named vm1..vmN unless the table declares VMs.
func newRig(t *testing.T, table string) *rig {
	t.Helper()
	return newRigWith(t, fastTiming, table)
}

// newRigWith is newRig with other fake timings.
func newRigWith(t testing.TB, timing, table string) *rig {
	t.Helper()
	dir := t.TempDir()
	journal := filepath.Join(dir, "journal.jsonl")
	text := fmt.Sprintf("[plugins.fake.config]\njournal = %q\n%s", journal, prefixTables(timing+table))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := sdk.ServeInProcess(ctx, fake.New, sdk.ConfigFromTOML("fake", filepath.Join(dir, "config.toml"), []byte(text)), nil)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	q := lifecycle.NewMemoryQuarantine()
	return &rig{t: t, driver: d, journal: journal, quarantine: q, out: filepath.Join(dir, "out"),
		manager: lifecycle.New(lifecycle.Options{Quarantine: q})}
}

// prefixTables puts the fake's tables under [plugins.fake.config].
func prefixTables(table string) string {
	var b strings.Builder
	for _, line := range strings.Split(table, "\n") {
		if strings.HasPrefix(line, "[") && !strings.HasPrefix(line, "[[") {
			line = "[plugins.fake.config." + line[1:]
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// vmTable declares running VMs with a clean snapshot.
func vmTable(names ...string) string {
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "[vms.%s]\nstate = \"running\"\nsnapshots = [\"clean\"]\n", n)
	}
	return b.String()
}

// settings are lifecycle settings with deadlines short enough for tests
// that expect failures.
func settings() config.Lifecycle {
	s := config.DefaultLifecycle()
	s.ACPITimeout = 2 * time.Second
	s.PowerOffTimeout = 2 * time.Second
	s.EmergencyTimeout = 2 * time.Second
	s.ReleaseTimeout = 2 * time.Second
	s.UnlockTimeout = 2 * time.Second
	s.RestoreTimeout = 5 * time.Second
	s.StartTimeout = 5 * time.Second
	s.CleanupTimeout = 20 * time.Second
	s.Snapshot = "clean"
	return s
}

func (r *rig) vm(name string, adjust ...func(*config.Lifecycle)) lifecycle.VM {
	s := settings()
	for _, f := range adjust {
		f(&s)
	}
	return lifecycle.VM{Name: name, Plugin: "fake", Driver: r.driver, Settings: s}
}

// scanProfile is the fake guest's scanner: exit 1 on EICAR, with its log
// as an artifact.
func scanProfile(t testing.TB, name string, vms []string, edit ...func(*config.Profile)) config.Profile {
	t.Helper()
	p := config.NewProfile(name, vms, `C:\sandbox\{name}`, `C:\Tools\scan.exe`, "-o", `C:\logs\scan.log`, "{sample}")
	p.Artifacts = []string{`C:\logs\scan.log`}
	for _, f := range edit {
		f(&p)
	}
	return p
}

// engine returns an engine whose every event the rig records.
func (r *rig) engine(maxStarting int) *engine.Engine {
	events := engine.NewEvents()
	events.Subscribe(func(e engine.Event) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.events = append(r.events, e)
	})
	return engine.New(engine.Options{Lifecycle: r.manager, MaxStarting: maxStarting, Events: events})
}

// pool builds a pool of the uses' VMs for their profiles.
func (r *rig) pool(ctx context.Context, maxStarting int, uses ...with) (*engine.Pool, []string) {
	r.t.Helper()
	var vms []lifecycle.VM
	var profiles []config.Profile
	var names []string
	for _, u := range uses {
		profiles = append(profiles, u.profile)
		names = append(names, u.profile.Name)
		for _, vm := range u.vms {
			if !slices.ContainsFunc(vms, func(v lifecycle.VM) bool { return v.Name == vm.Name }) {
				vms = append(vms, vm)
			}
		}
	}
	p, err := engine.NewPool(ctx, r.engine(maxStarting), vms, profiles)
	require.NoError(r.t, err)
	return p, names
}

// run runs samples through the uses' profiles, as `sandbox run` does.
func (r *rig) run(ctx context.Context, maxStarting int, samples []engine.Sample, uses ...with) *engine.Summary {
	r.t.Helper()
	p, names := r.pool(ctx, maxStarting, uses...)
	sum, err := p.RunBatch(ctx, engine.Batch{Samples: samples, Profiles: names, OutDir: r.out})
	require.NoError(r.t, err)
	return sum
}

// eicarBytes is the EICAR test file, assembled at run time so that no
// scanner flags this source.
func eicarBytes() []byte {
	return []byte(`X5O!P%@AP[4\PZX54(P^)7CC)7}$` + `EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`)
}

// sample writes a sample file and opens it.
func sample(t testing.TB, name string, data []byte) engine.Sample {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, data, 0o644))
	s, err := engine.OpenSample(p)
	require.NoError(t, err)
	return s
}

func cleanSamples(t testing.TB, n int) []engine.Sample {
	out := make([]engine.Sample, n)
	for i := range out {
		out[i] = sample(t, fmt.Sprintf("s%02d.txt", i), fmt.Appendf(nil, "harmless %d\n", i))
	}
	return out
}

// requireClean asserts that the VM is off, unlocked and on its clean
// snapshot, as the fake sees it.
func (r *rig) requireClean(name string) {
	r.t.Helper()
	st, err := r.driver.Status(context.Background(), name)
	require.NoError(r.t, err)
	assert.True(r.t, st.Power.IsOff(), "%s is %s", name, st.Power)
	assert.Equal(r.t, hypervisor.LockUnlocked, st.Lock, "%s", name)
	assert.Equal(r.t, "clean", st.CurrentSnapshot, "%s", name)
}

// entries returns the journal's entries for a VM: what reached the fake.
func (r *rig) entries(vm string) []fake.Entry {
	r.t.Helper()
	entries, err := fake.ReadJournal(r.journal)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(r.t, err)
	var out []fake.Entry
	for _, e := range entries {
		if e.VM == vm {
			out = append(out, e)
		}
	}
	return out
}

// sent returns the operations the engine sent the fake for a VM that
// succeeded (not those a native cleanup sent itself).
func (r *rig) sent(vm string) []string {
	var out []string
	for _, e := range r.entries(vm) {
		if e.Outcome == "ok" && e.Via == "" {
			out = append(out, e.Op)
		}
	}
	return out
}

// steps returns a result's transitions as step names.
func steps(res *engine.Result) []engine.Step {
	out := make([]engine.Step, len(res.Transitions))
	for i, tr := range res.Transitions {
		out[i] = tr.Step
	}
	return out
}

// interval is the time a task held a VM: from preparing to its end.
type interval struct {
	vm         string
	start, end time.Time
}

// busy returns, from the reports' transition logs, when each task held
// its VM.
func busy(sum *engine.Summary) []interval {
	var out []interval
	for _, rep := range sum.Reports {
		for _, res := range rep.Results {
			var iv interval
			for _, tr := range res.Transitions {
				switch {
				case tr.Step == engine.StepPreparing:
					iv = interval{vm: res.VM, start: tr.At}
				case tr.Step.Final() && !iv.start.IsZero():
					iv.end = tr.At
				}
			}
			if !iv.start.IsZero() {
				out = append(out, iv)
			}
		}
	}
	slices.SortFunc(out, func(a, b interval) int { return a.start.Compare(b.start) })
	return out
}
