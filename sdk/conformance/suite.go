package conformance

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// check is one entry of the registry.
type check struct {
	name    string // "Group/Name", stable: users select checks by it
	clause  string // the clause of docs/contract.md it enforces
	summary string // what the driver must do, in one sentence
	caps    []hypervisor.Capability
	anyCap  []hypervisor.Capability
	needs   []need
	fn      func(p *probe)
}

// need is a VM (or snapshot) of the target a check cannot do without.
type need int

const (
	needSnapshot need = iota
	needPeer
	needLock
	needDeadline
	needUnmapped
)

var needs = map[need]struct{ field, why string }{
	needSnapshot: {"Snapshot", "a snapshot of Target.VM to restore to (the VM is at none)"},
	needPeer:     {"PeerVM", "Target.PeerVM, a second disposable VM"},
	needLock:     {"LockVM", "Target.LockVM, a VM whose session lock outlives its process until Unlock"},
	needDeadline: {"DeadlineVM", "Target.DeadlineVM, a VM whose restore takes longer than Timing.Margin"},
	needUnmapped: {"UnmappedVM", "Target.UnmappedVM, a VM in a state the driver has no word for"},
}

// CheckInfo describes one check, for listings and documentation.
type CheckInfo struct {
	// Name is the check's stable name, e.g. "Restore/UnknownSnapshotIsNotFound".
	Name string `json:"name"`
	// Clause is the clause of docs/contract.md it enforces.
	Clause string `json:"clause"`
	// Summary says what the driver must do.
	Summary string `json:"summary"`
	// Capabilities must all be declared, or the check is skipped.
	Capabilities []hypervisor.Capability `json:"capabilities,omitempty"`
	// AnyCapability: at least one must be declared, or the check is skipped.
	AnyCapability []hypervisor.Capability `json:"any_capability,omitempty"`
	// Needs names the Target fields the check needs set, or it is skipped.
	Needs []string `json:"needs,omitempty"`
}

// Checks lists every check in the order the suite runs them.
func Checks() []CheckInfo {
	out := make([]CheckInfo, 0, len(registry()))
	for _, c := range registry() {
		info := CheckInfo{Name: c.name, Clause: c.clause, Summary: c.summary,
			Capabilities: c.caps, AnyCapability: c.anyCap}
		for _, n := range c.needs {
			info.Needs = append(info.Needs, needs[n].field)
		}
		out = append(out, info)
	}
	return out
}

// registry is every check, grouped, in run order.
func registry() []*check {
	return slices.Concat(identityChecks, statusChecks, startChecks, stopChecks, unlockChecks,
		restoreChecks, cleanupChecks, guestChecks, watchChecks, deadlineChecks, concurrencyChecks, errorChecks)
}

// group is the part of a check's name before the slash.
func (c *check) group() string { g, _, _ := strings.Cut(c.name, "/"); return g }

// short is the part of a check's name after the slash.
func (c *check) short() string { _, s, _ := strings.Cut(c.name, "/"); return s }

// skipReason says why c cannot run against this target, or "".
func (s *session) skipReason(c *check) string {
	for _, cp := range c.caps {
		if !s.caps.Has(cp) {
			return fmt.Sprintf("the driver does not declare %s", cp)
		}
	}
	if len(c.anyCap) > 0 && !slices.ContainsFunc(c.anyCap, s.caps.Has) {
		return fmt.Sprintf("the driver declares none of %s", strings.ReplaceAll(hypervisor.Capabilities(c.anyCap).String(), ",", ", "))
	}
	for _, n := range c.needs {
		missing := false
		switch n {
		case needSnapshot:
			missing = s.vms[s.target.VM].snapshot == ""
		case needPeer:
			missing = s.target.PeerVM == ""
		case needLock:
			missing = s.target.LockVM == ""
		case needDeadline:
			missing = s.target.DeadlineVM == ""
		case needUnmapped:
			missing = s.target.UnmappedVM == ""
		}
		if missing {
			return "needs " + needs[n].why
		}
	}
	return ""
}

// vmsOf lists the VMs c may change, which get their baseline first.
func (s *session) vmsOf(c *check) []string {
	vms := []string{s.target.VM}
	for _, n := range c.needs {
		switch n {
		case needPeer:
			vms = append(vms, s.target.PeerVM)
		case needLock:
			vms = append(vms, s.target.LockVM)
		case needDeadline:
			vms = append(vms, s.target.DeadlineVM)
		}
	}
	return vms
}

// exec runs one check: skip if it cannot run here, cite its clause, give
// its VMs their baseline, run it under a bound.
func (s *session) exec(r reporter, c *check) {
	r.Helper()
	if why := s.skipReason(c); why != "" {
		r.Skipf("%s: %s", c.clause, why)
	}
	r.Logf("%s: %s", c.clause, c.summary)
	ctx, cancel := context.WithTimeout(s.ctx, 10*s.timing.Settle)
	r.Cleanup(cancel)
	p := &probe{reporter: r, s: s, c: c, ctx: ctx}
	for _, vm := range s.vmsOf(c) {
		if err := s.baseline(ctx, vm); err != nil {
			p.fatalf("cannot bring VM %q to its baseline (off, unlocked, at its snapshot) before the check: %v", vm, err)
		}
	}
	c.fn(p)
}

// Run runs every check as a subtest of t, grouped by capability
// ("Restore/UnknownSnapshotIsNotFound"), so that -run selects them. The VMs
// are put back as they were found when t ends, also when a check failed.
func Run(t *testing.T, target Target) {
	t.Helper()
	s, err := open(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.finish(); err != nil {
			t.Errorf("conformance: could not put the VMs back as they were: %v", err)
		}
	})
	t.Logf("driver %s %s, contract version %d, capabilities: %s", s.info.Name, s.info.Version,
		s.info.ContractVersion, s.caps)
	checks := registry()
	for i := 0; i < len(checks); {
		g := checks[i].group()
		j := i
		for j < len(checks) && checks[j].group() == g {
			j++
		}
		group := checks[i:j]
		t.Run(g, func(t *testing.T) {
			for _, c := range group {
				t.Run(c.short(), func(t *testing.T) { s.exec(t, c) })
			}
		})
		i = j
	}
}

// Options adjusts Collect.
type Options struct {
	// Match selects checks by name; nil runs them all.
	Match func(check string) bool
	// Progress, if set, is called with each result as it comes.
	Progress func(Result)
}

// Collect runs the checks outside go test and returns their results: the
// form the CLI prints, and the way a test inspects the suite's verdict
// without failing itself. An error means the run could not begin (no
// driver, no such VM); the checks' own failures are in the report. Ending
// ctx ends the run; the VMs are put back all the same.
func Collect(ctx context.Context, target Target, opts Options) (*Report, error) {
	s, err := open(ctx, target)
	if err != nil {
		return nil, err
	}
	rep := &Report{Driver: s.info, Results: []Result{}}
	for _, c := range registry() {
		if opts.Match != nil && !opts.Match(c.name) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		rec := &recorder{}
		begun := time.Now()
		rec.run(func(r reporter) { s.exec(r, c) })
		res := rec.result(c, time.Since(begun))
		if ctx.Err() != nil && res.Outcome == Fail {
			// Cut short by the caller (Ctrl-C): no verdict on the driver.
			res.Outcome, res.Message = Skip, "interrupted: "+res.Message
		}
		rep.Results = append(rep.Results, res)
		if opts.Progress != nil {
			opts.Progress(res)
		}
	}
	if err := s.finish(); err != nil {
		rep.Restore = err.Error()
	}
	return rep, nil
}
