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
	assert.Equal(t, "§13.1: needs Target.PeerVM, a second disposable VM", byName["Concurrency/TwoVMs"].Message)
	assert.Equal(t, "§3.2: needs Target.UnmappedVM, a VM in a state the driver has no word for", byName["Status/UnmappedStateIsUnknown"].Message)
	assert.False(t, rep.Failed())
}

func TestCollectRunsTheMatchingChecksAndReportsEach(t *testing.T) {
	var seen []string
	rep, err := Collect(context.Background(), stubTarget(), Options{
		Match:    func(name string) bool { return strings.HasPrefix(name, "Start/") },
		Progress: func(r Result) { seen = append(seen, r.Check) },
	})
	require.NoError(t, err)
	assert.Equal(t, []string{"Start/UnknownVMIsNotFound", "Start/ReachesRunning", "Start/RunningIsNoOp", "Start/LingeringLockIsLocked"}, seen)
	require.Len(t, rep.Results, 4)
	assert.Equal(t, "§4.1", rep.Results[1].Clause)
	assert.Equal(t, Pass, rep.Results[1].Outcome)
	assert.Contains(t, rep.Results[1].Log, "§4.1: a started VM reaches running")
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
	assert.Equal(t, "§3.2", failed[0].Clause)
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
	assert.Len(t, rep.Results, 1)
	assert.Empty(t, rep.Restore)
}
