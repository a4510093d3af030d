package conformance

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
)

// stub is the smallest driver that keeps the contract: one VM that starts
// and powers off at once, and nothing optional but power-off.
type stub struct {
	hypervisor.Unimplemented
	mu      sync.Mutex
	running bool
	changed time.Time
}

func newStub(sdk.Config, hclog.Logger) (hypervisor.Driver, error) {
	return &stub{changed: time.Now()}, nil
}

func (s *stub) Info(context.Context) (hypervisor.Info, error) {
	return hypervisor.Info{Name: "stub", Version: "1", ContractVersion: 2,
		Capabilities: hypervisor.NewCapabilities(hypervisor.CapStopPowerOff)}, nil
}

func (s *stub) Status(_ context.Context, vm string) (hypervisor.Status, error) {
	if vm != "vm" {
		return hypervisor.Status{}, hypervisor.NewError(hypervisor.CodeNotFound, hypervisor.OpStatus, vm, "no VM %q", vm)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := hypervisor.Status{VM: vm, Power: hypervisor.PowerOff, Raw: "off", Lock: hypervisor.LockUnknown, StateChanged: s.changed}
	if s.running {
		st.Power, st.Raw = hypervisor.PowerRunning, "on"
	}
	return st, nil
}

func (s *stub) Start(_ context.Context, vm string) error {
	if vm != "vm" {
		return hypervisor.NewError(hypervisor.CodeNotFound, hypervisor.OpStart, vm, "no VM %q", vm)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		s.running, s.changed = true, time.Now()
	}
	return nil
}

func (s *stub) Stop(_ context.Context, vm string, m hypervisor.StopMethod) error {
	if m != hypervisor.StopPowerOff {
		return hypervisor.Unsupported(hypervisor.OpStop, vm)
	}
	if vm != "vm" {
		return hypervisor.NewError(hypervisor.CodeNotFound, hypervisor.OpStop, vm, "no VM %q", vm)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		s.running, s.changed = false, time.Now()
	}
	return nil
}

func stubTarget() Target {
	return Target{
		Connect: InProcess("stub", newStub, ""),
		VM:      "vm",
		Timing:  Timing{Settle: 2 * time.Second, ACPI: time.Second, Deadline: 20 * time.Millisecond, Margin: 500 * time.Millisecond},
	}
}

func TestAMinimalDriverPassesOrIsSkippedWithAReason(t *testing.T) {
	rep, err := Collect(context.Background(), stubTarget(), Options{})
	require.NoError(t, err)
	assert.Equal(t, "stub", rep.Driver.Name)
	assert.Len(t, rep.Results, len(Checks()))
	for _, r := range rep.Results {
		assert.NotEqual(t, Fail, r.Outcome, "%s: %s", r.Check, r.Message)
		if r.Outcome == Skip {
			assert.True(t, strings.HasPrefix(r.Message, r.Clause+": "), "%s: %q", r.Check, r.Message)
		}
	}
	byName := map[string]Result{}
	for _, r := range rep.Results {
		byName[r.Check] = r
	}
	assert.Equal(t, Pass, byName["Capabilities/UndeclaredAnswerUnsupported"].Outcome)
	assert.Equal(t, Pass, byName["Stop/PowerOff"].Outcome)
	assert.Equal(t, "§7.3: the driver does not declare snapshot.restore", byName["Restore/NamedSnapshot"].Message)
	assert.Equal(t, "§13.1a: needs a second disposable VM (Target.PeerVM, --peer-vm)", byName["Concurrency/TwoVMs"].Message)
	assert.Equal(t, "§3.2b: needs a VM in a state the driver has no word for (Target.UnmappedVM, --unmapped-vm)",
		byName["Status/UnmappedStateIsUnknown"].Message)
	assert.False(t, rep.Failed())

	// The rules left unchecked for want of a fixture, not those the driver
	// has no capability for.
	var unchecked []string
	for _, u := range rep.Unchecked {
		unchecked = append(unchecked, u.Rule)
	}
	assert.Equal(t, []string{"§3.2b", "§13.1a"}, unchecked)
	assert.Equal(t, []string{"UnmappedVM"}, rep.Unchecked[0].Fixtures)
	assert.Equal(t, []string{"Status/UnmappedStateIsUnknown"}, rep.Unchecked[0].Checks)
	assert.Contains(t, rep.Unchecked[1].How[0], "--peer-vm")
}

func TestCollectRunsTheMatchingChecksAndReportsEach(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	rep, err := Collect(context.Background(), stubTarget(), Options{
		Match: func(name string) bool { return strings.HasPrefix(name, "Start/") },
		Progress: func(r Result) {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, r.Check)
		},
	})
	require.NoError(t, err)
	want := []string{"Start/UnknownVMIsNotFound", "Start/ReachesRunning", "Start/RunningIsNoOp", "Start/LingeringLockIsLocked"}
	assert.ElementsMatch(t, want, seen, "each reported as it ends")
	require.Len(t, rep.Results, 4)
	for i, r := range rep.Results {
		assert.Equal(t, want[i], r.Check, "the report is in suite order")
	}
	assert.Equal(t, "§4.1", rep.Results[1].Clause)
	assert.Equal(t, Pass, rep.Results[1].Outcome)
	assert.Contains(t, rep.Results[1].Log[0], "§4.1: right after Start returns")
	assert.Equal(t, Skip, rep.Results[3].Outcome)
}

// Collect's report is how a test inspects the verdict without failing: a
// driver that breaks a rule shows up as a failed result.
func TestCollectReportsAFailureWithItsClause(t *testing.T) {
	target := stubTarget()
	target.Connect = InProcess("stub", func(cfg sdk.Config, l hclog.Logger) (hypervisor.Driver, error) {
		return &misreporting{stub: stub{changed: time.Now()}}, nil
	}, "")
	rep, err := Collect(context.Background(), target, Options{Match: func(n string) bool { return strings.HasPrefix(n, "Status/") }})
	require.NoError(t, err)
	var failed []Result
	for _, r := range rep.Results {
		if r.Outcome == Fail {
			failed = append(failed, r)
		}
	}
	require.Len(t, failed, 1)
	assert.Equal(t, "Status/PowerAndRawAreValid", failed[0].Check)
	assert.Equal(t, "§3.2a", failed[0].Clause)
	assert.Contains(t, failed[0].Message, "Raw is empty")
	assert.True(t, rep.Failed())
}

// misreporting leaves Raw empty while the VM runs.
type misreporting struct{ stub }

func (m *misreporting) Status(ctx context.Context, vm string) (hypervisor.Status, error) {
	st, err := m.stub.Status(ctx, vm)
	if st.Power == hypervisor.PowerRunning {
		st.Raw = ""
	}
	return st, err
}

func TestABadTargetIsAnErrorBeforeAnyCheck(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target func(Target) Target
		msg    string
	}{
		{"no connector", func(t Target) Target { t.Connect = nil; return t }, "Target.Connect is nil"},
		{"no VM", func(t Target) Target { t.VM = ""; return t }, "Target.VM is empty"},
		{"one VM in two roles", func(t Target) Target { t.PeerVM = "vm"; return t }, `Target.VM and Target.PeerVM are both "vm"`},
		{"a VM the driver does not have", func(t Target) Target { t.LockVM = "ghost"; return t }, `cannot use VM "ghost" (Target.LockVM)`},
		{"a driver that cannot be reached", func(t Target) Target {
			t.Connect = func(context.Context) (hypervisor.Driver, func(), error) { return nil, nil, errors.New("no route") }
			return t
		}, "connect to the driver: no route"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Collect(context.Background(), tc.target(stubTarget()), Options{})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.msg)
		})
	}
}

func TestRecorderEndsAndCleansUpLikeTestingT(t *testing.T) {
	c := &check{name: "G/C", clause: "§1.1"}
	run := func(body func(r reporter)) Result {
		rec := &recorder{}
		rec.run(body)
		return rec.result(c, time.Millisecond)
	}
	var order []string
	res := run(func(r reporter) {
		r.Cleanup(func() { order = append(order, "first") })
		r.Cleanup(func() { order = append(order, "second") })
		r.Errorf("broken: %d", 1)
		r.FailNow()
		order = append(order, "after FailNow")
	})
	assert.Equal(t, Fail, res.Outcome)
	assert.Equal(t, "broken: 1", res.Message)
	assert.Equal(t, []string{"second", "first"}, order)

	res = run(func(r reporter) { r.Logf("note"); r.Skipf("no %s", "VM") })
	assert.Equal(t, Skip, res.Outcome)
	assert.Equal(t, "no VM", res.Message)
	assert.Equal(t, []string{"note"}, res.Log)

	res = run(func(r reporter) { panic("boom") })
	assert.Equal(t, Fail, res.Outcome)
	assert.Contains(t, res.Message, "panic: boom")

	res = run(func(r reporter) { r.Cleanup(func() { r.Errorf("cleanup failed") }) })
	assert.Equal(t, Fail, res.Outcome)

	assert.Equal(t, Pass, run(func(reporter) {}).Outcome)
}

// The suite's own go test form, against the stub.
func TestRunAsSubtests(t *testing.T) {
	Run(t, stubTarget())
}

// Ending the context ends the run after the check under way, and the VMs
// are still put back.
func TestCollectStopsWhenItsContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rep, err := Collect(ctx, stubTarget(), Options{
		Match:    func(name string) bool { return strings.HasPrefix(name, "Start/") },
		Progress: func(Result) { cancel() },
	})
	require.NoError(t, err)
	assert.Less(t, len(rep.Results), 4, "the checks not begun when the context ended are left out")
	assert.Empty(t, rep.Restore)
}

// The scheduler runs checks on different VMs at once, keeps each VM's
// checks in suite order, and runs a check marked alone with nothing beside
// it.
func TestScheduleOverlapsVMsAndKeepsEachVMsOrder(t *testing.T) {
	type span struct{ begun, ended time.Time }
	checks := []*check{
		{name: "G/A", on: []role{roleVM}},
		{name: "G/B", on: []role{rolePeer}},
		{name: "G/C", on: []role{roleVM}},
		{name: "G/D", free: true},
		{name: "G/E", alone: true},
		{name: "G/F", on: []role{rolePeer}},
	}
	vmsOf := func(c *check) []string {
		switch {
		case c.free || c.alone:
			return nil
		case c.on[0] == roleVM:
			return []string{"vm"}
		}
		return []string{"peer"}
	}
	var mu sync.Mutex
	spans := map[string]span{}
	schedule(checks, vmsOf, func(c *check) bool {
		begun := time.Now()
		time.Sleep(30 * time.Millisecond) // stands in for a check's work
		mu.Lock()
		spans[c.short()] = span{begun, time.Now()}
		mu.Unlock()
		return true
	})
	require.Len(t, spans, len(checks))
	overlap := func(a, b string) bool {
		return spans[a].begun.Before(spans[b].ended) && spans[b].begun.Before(spans[a].ended)
	}
	assert.True(t, overlap("A", "B"), "checks on different VMs run at once")
	assert.True(t, overlap("A", "D"), "a check on no VM runs beside any")
	assert.False(t, spans["C"].begun.Before(spans["A"].ended), "a VM's checks keep their order")
	for _, before := range []string{"A", "B", "C", "D"} {
		assert.False(t, spans["E"].begun.Before(spans[before].ended), "E runs alone, after %s", before)
	}
	assert.False(t, spans["F"].begun.Before(spans["E"].ended), "F waits for E, which runs alone")
}

func TestTestFlagPatternsSplitAsGoTestDoes(t *testing.T) {
	assert.Equal(t, []string{"TestConformance", "Restore", "Twice$"}, splitPattern("TestConformance/Restore/Twice$"))
	assert.Equal(t, []string{"Test", "(Stop/A|Start)"}, splitPattern("Test/(Stop/A|Start)"), "a slash inside parentheses does not split")
	assert.Equal(t, []string{"A", "[/]", "B"}, splitPattern("A/[/]/B"))
}
