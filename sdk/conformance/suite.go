package conformance

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// check is one entry of the registry.
type check struct {
	name    string   // "Group/Name", stable: users select checks by it
	clause  string   // the rule of docs/contract.md it enforces first ("§3.2b")
	also    []string // further rules it verifies
	summary string   // what the driver must do, in one sentence
	caps    []hypervisor.Capability
	anyCap  []hypervisor.Capability
	needs   []need
	// on lists the VMs the check may change, which get their baseline
	// first and which no other check uses meanwhile; nil means Target.VM.
	on []role
	// free: the check changes no VM of the target (it reads, or uses a VM
	// that does not exist), so it needs no baseline and runs beside any
	// other.
	free bool
	// alone: the check times the driver, so it runs with no other check
	// beside it.
	alone bool
	fn    func(p *probe)
}

// role is a VM of the target, by the field that names it.
type role int

const (
	roleVM role = iota
	rolePeer
	roleLock
	roleDeadline
)

// need is a VM (or snapshot) of the target a check cannot do without.
type need int

const (
	needSnapshot need = iota
	needOther
	needPeer
	needLock
	needDeadline
	needUnmapped
)

// A fixture is what a need asks of the target: the Target field and
// `sandbox conformance` flag that provide it, and what it must be.
type fixture struct{ field, flag, what string }

var needs = map[need]fixture{
	needSnapshot: {"Snapshot", "--snapshot", "a snapshot of Target.VM to restore to (the VM is at none)"},
	needOther:    {"OtherSnapshot", "--other-snapshot", "a second snapshot of Target.VM, other than Target.Snapshot"},
	needPeer:     {"PeerVM", "--peer-vm", "a second disposable VM"},
	needLock:     {"LockVM", "--lock-vm", "a VM whose session lock outlives its process until Unlock"},
	needDeadline: {"DeadlineVM", "--deadline-vm", "a VM whose restore takes longer than Timing.Margin"},
	needUnmapped: {"UnmappedVM", "--unmapped-vm", "a VM in a state the driver has no word for"},
}

// CheckInfo describes one check, for listings and documentation.
type CheckInfo struct {
	// Name is the check's stable name, e.g. "Restore/UnknownSnapshotIsNotFound".
	Name string `json:"name"`
	// Clause is the rule of docs/contract.md it enforces first, e.g. "§7.1b".
	Clause string `json:"clause"`
	// Rules are every rule it verifies, Clause first.
	Rules []string `json:"rules"`
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
		info := CheckInfo{Name: c.name, Clause: c.clause, Rules: c.rules(), Summary: c.summary,
			Capabilities: c.caps, AnyCapability: c.anyCap}
		for _, n := range c.needs {
			info.Needs = append(info.Needs, needs[n].field)
		}
		out = append(out, info)
	}
	return out
}

// rules is every rule c verifies, its clause first.
func (c *check) rules() []string { return append([]string{c.clause}, c.also...) }

// registry is every check, grouped, in run order.
func registry() []*check {
	// The concurrency checks come last, and among them the one that runs
	// alone, so that no check waits for it.
	return slices.Concat(identityChecks, statusChecks, startChecks, stopChecks, unlockChecks,
		restoreChecks, cleanupChecks, guestChecks, watchChecks, deadlineChecks, errorChecks, concurrencyChecks)
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
	if n, ok := s.missing(c); ok {
		return "needs " + needs[n].what + " (Target." + needs[n].field + ", " + needs[n].flag + ")"
	}
	return ""
}

// missing is the first fixture c needs that the target does not provide.
func (s *session) missing(c *check) (need, bool) {
	for _, n := range c.needs {
		missing := false
		switch n {
		case needSnapshot:
			missing = s.vms[s.target.VM].snapshot == ""
		case needOther:
			missing = s.target.OtherSnapshot == ""
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
			return n, true
		}
	}
	return 0, false
}

// vmsOf lists the VMs c may change, which get their baseline first.
func (s *session) vmsOf(c *check) []string {
	if c.free {
		return nil
	}
	roles := c.on
	if roles == nil {
		roles = []role{roleVM}
	}
	var vms []string
	for _, r := range roles {
		vm := map[role]string{roleVM: s.target.VM, rolePeer: s.target.PeerVM,
			roleLock: s.target.LockVM, roleDeadline: s.target.DeadlineVM}[r]
		if vm != "" {
			vms = append(vms, vm)
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

// Run runs the checks that go test's -run and -skip select, each as a
// subtest of t named after it ("Restore/UnknownSnapshotIsNotFound"), with
// its outcome and log. Checks on different VMs run at the same time where
// the contract allows (see Collect), each inside its own subtest, so the
// time go test gives a subtest is its check's own. With target.Model set,
// the model's exploration follows the checks as the subtest "Model". The
// VMs are put back as they were found when t ends, also when a check
// failed.
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
	var checks []*check
	for _, c := range registry() {
		if selectedByTestFlags(t.Name() + "/" + c.name) {
			checks = append(checks, c)
		}
	}
	s.runSubtests(t, checks)
	// After the checks, with every VM free: the model's sequences use them all.
	if target.Model.enabled() && selectedByTestFlags(t.Name()+"/Model") {
		t.Run("Model", func(t *testing.T) { replayModel(t, s.explore(target.Model)) })
	}
}

// runSubtests runs checks through the scheduler, each in a subtest of t
// begun when the check may begin, so that go test times the check itself
// rather than how long a subtest waited for checks on other VMs (testing
// lets several goroutines call t.Run at once). It returns when every
// check has ended.
func (s *session) runSubtests(t *testing.T, checks []*check) {
	s.runAll(checks, func(c *check, run func() Result) {
		t.Run(c.name, func(t *testing.T) { replay(t, run()) })
	})
}

// replayModel reports the model's exploration through t.
func replayModel(t *testing.T, m *ModelReport) {
	t.Helper()
	t.Log(m.Summary())
	switch {
	case m.Deviation != nil:
		for _, l := range m.Deviation.Log {
			t.Log(l)
		}
		t.Errorf("the model found a deviation: %s", m.Deviation)
	case m.Error != "":
		t.Errorf("the model could not explore: %s", m.Error)
	}
}

// replay reports a collected result through t.
func replay(t *testing.T, res Result) {
	t.Helper()
	for _, l := range res.Log {
		t.Log(l)
	}
	switch res.Outcome {
	case Skip:
		t.Skip(res.Message)
	case Fail:
		t.Error(res.Message)
	}
}

// Options adjusts Collect.
type Options struct {
	// Match selects checks by name; nil runs them all.
	Match func(check string) bool
	// Progress, if set, is called with each result as it comes, from the
	// goroutine that ran the check.
	Progress func(Result)
}

// Collect runs the checks outside go test and returns their results: the
// form the CLI prints, and the way a test inspects the suite's verdict
// without failing itself. An error means the run could not begin (no
// driver, no such VM); the checks' own failures are in the report. Ending
// ctx ends the run; the VMs are put back all the same.
//
// Checks run in suite order on each VM, and checks on different VMs (or on
// none) at the same time, since operations on different VMs must not wait
// for each other (§13.1a); the few that time the driver run alone.
func Collect(ctx context.Context, target Target, opts Options) (*Report, error) {
	s, err := open(ctx, target)
	if err != nil {
		return nil, err
	}
	var checks []*check
	for _, c := range registry() {
		if opts.Match == nil || opts.Match(c.name) {
			checks = append(checks, c)
		}
	}
	byCheck := map[*check]Result{}
	var mu sync.Mutex
	s.runAll(checks, func(c *check, run func() Result) {
		res := run()
		mu.Lock()
		byCheck[c] = res
		mu.Unlock()
		if opts.Progress != nil {
			opts.Progress(res)
		}
	})
	rep := &Report{Driver: s.info, Results: []Result{}}
	for _, c := range checks {
		if res, ok := byCheck[c]; ok {
			rep.Results = append(rep.Results, res)
		}
	}
	rep.Unchecked = s.unchecked(checks, byCheck)
	if target.Model.enabled() && s.ctx.Err() == nil {
		rep.Model = s.explore(target.Model)
	}
	if err := s.finish(); err != nil {
		rep.Restore = err.Error()
	}
	return rep, nil
}

// runOne runs c and returns its result.
func (s *session) runOne(c *check) Result {
	rec := &recorder{}
	begun := time.Now()
	rec.run(func(r reporter) { s.exec(r, c) })
	res := rec.result(c, time.Since(begun))
	if s.ctx.Err() != nil && res.Outcome == Fail {
		// Cut short by the caller (Ctrl-C): no verdict on the driver.
		res.Outcome, res.Message = Skip, "interrupted: "+res.Message
	}
	return res
}

// runAll runs checks through the scheduler: each, once it may begin, is
// handed to do with the function that runs it and returns its result.
// Once the session's context ends, the checks not begun are left out.
func (s *session) runAll(checks []*check, do func(c *check, run func() Result)) {
	schedule(checks, s.vmsOf, func(c *check) bool {
		if s.ctx.Err() != nil {
			return false
		}
		do(c, func() Result { return s.runOne(c) })
		return true
	})
}

// unchecked lists the rules that no check verified because every check of
// theirs that ran was skipped for want of a fixture, with what to provide.
func (s *session) unchecked(checks []*check, results map[*check]Result) []Unchecked {
	verified := map[string]bool{}
	wanting := map[string][]*check{}
	for _, c := range checks {
		res, ok := results[c]
		if !ok {
			continue
		}
		for _, r := range c.rules() {
			switch {
			case res.Outcome != Skip:
				verified[r] = true
			case s.skipReason(c) != "" && s.capsAllow(c):
				wanting[r] = append(wanting[r], c)
			}
		}
	}
	var out []Unchecked
	for _, c := range checks {
		for _, r := range c.rules() {
			if verified[r] || len(wanting[r]) == 0 || slices.ContainsFunc(out, func(u Unchecked) bool { return u.Rule == r }) {
				continue
			}
			u := Unchecked{Rule: r}
			for _, w := range wanting[r] {
				u.Checks = append(u.Checks, w.name)
				if n, ok := s.missing(w); ok && !slices.Contains(u.Fixtures, needs[n].field) {
					u.Fixtures = append(u.Fixtures, needs[n].field)
					u.How = append(u.How, fmt.Sprintf("%s (%s): %s", needs[n].flag, "Target."+needs[n].field, needs[n].what))
				}
			}
			out = append(out, u)
		}
	}
	slices.SortStableFunc(out, func(a, b Unchecked) int { return compareRules(a.Rule, b.Rule) })
	return out
}

// capsAllow reports whether the driver declares what c needs: a check
// skipped for a capability is not missing a fixture.
func (s *session) capsAllow(c *check) bool {
	for _, cp := range c.caps {
		if !s.caps.Has(cp) {
			return false
		}
	}
	return len(c.anyCap) == 0 || slices.ContainsFunc(c.anyCap, s.caps.Has)
}

// compareRules orders rule marks as the contract does: §2.1b before
// §10.1a.
func compareRules(a, b string) int {
	key := func(r string) (int, int, string) {
		var major, minor int
		var letter string
		r = strings.TrimPrefix(r, "§")
		fmt.Sscanf(r, "%d.%d%s", &major, &minor, &letter)
		return major, minor, letter
	}
	am, an, al := key(a)
	bm, bn, bl := key(b)
	if am != bm {
		return am - bm
	}
	if an != bn {
		return an - bn
	}
	return strings.Compare(al, bl)
}
