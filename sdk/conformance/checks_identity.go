package conformance

import (
	"context"
	"errors"
	"slices"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

var identityChecks = []*check{
	{
		name: "Info/Identity", clause: "§1.1",
		summary: "Info names the driver, its version and contract version, and answers the same every time",
		free:    true,
		fn:      checkIdentity,
	},
	{
		name: "Capabilities/UndeclaredAnswerUnsupported", clause: "§1.2a",
		summary: "every operation behind a capability the driver does not declare answers unsupported",
		fn:      checkUndeclared,
	},
	{
		name: "Capabilities/UndeclaredGuestOnRunningVM", clause: "§1.2a",
		summary: "every guest operation the driver does not declare answers unsupported on a running guest too",
		fn:      checkUndeclaredGuest,
	},
	{
		name: "Capabilities/DeclaredAreSupported", clause: "§1.2b",
		summary: "no operation behind a declared capability answers unsupported",
		fn:      checkDeclared,
	},
	{
		name: "List/IncludesTheVMs", clause: "§2.1a",
		summary: "ListVMs lists the target's VMs, each name once, with valid power states",
		caps:    []hypervisor.Capability{hypervisor.CapList},
		free:    true,
		fn:      checkListIncludes,
	},
	{
		name: "List/StableOrder", clause: "§2.1b",
		summary: "two listings give the VMs in the same order",
		caps:    []hypervisor.Capability{hypervisor.CapList},
		free:    true,
		fn:      checkListStable,
	},
}

var errorChecks = []*check{
	{
		name: "Errors/CarryOperationAndVM", clause: "§11.2",
		summary: "an error names its operation and VM and carries the driver's own message",
		free:    true,
		fn:      checkErrorDetail,
	},
}

func checkIdentity(p *probe) {
	info, err := p.d().Info(p.ctx)
	if !p.ok(err, "Info") {
		return
	}
	if info.Name == "" {
		p.Errorf("Info.Name is empty")
	}
	if info.ContractVersion < 1 || info.ContractVersion > hypervisor.ContractVersion {
		p.Errorf("Info.ContractVersion is %d; this suite knows versions 1 to %d", info.ContractVersion, hypervisor.ContractVersion)
	}
	if info.ContractVersion >= 2 && info.Version == "" {
		p.Errorf("Info.Version is empty")
	}
	if sorted := hypervisor.NewCapabilities(info.Capabilities...); !slices.Equal(sorted, info.Capabilities) {
		p.Errorf("Info.Capabilities %v is not a sorted set without duplicates (build it with hypervisor.NewCapabilities)", info.Capabilities)
	}
	again, err := p.d().Info(p.ctx)
	if p.ok(err, "second Info") && !infoEqual(info, again) {
		p.Errorf("Info changed between two calls: %+v, then %+v", info, again)
	}
	p.Logf("driver %s %s (contract %d) on %q: %s", info.Name, info.Version, info.ContractVersion, info.Hypervisor, info.Capabilities)
}

func infoEqual(a, b hypervisor.Info) bool {
	return a.Name == b.Name && a.Version == b.Version && a.ContractVersion == b.ContractVersion &&
		a.Hypervisor == b.Hypervisor && slices.Equal(a.Capabilities, b.Capabilities)
}

// checkUndeclared calls what is behind every capability the driver leaves
// out. A driver that does it anyway has changed the VM; the baseline of
// the next check repairs that.
func checkUndeclared(p *probe) {
	var missing []hypervisor.Capability
	for _, c := range hypervisor.AllCapabilities {
		if !p.has(c) {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		p.Skipf("the driver declares every capability")
	}
	if !p.has(hypervisor.CapList) {
		_, err := p.d().ListVMs(p.ctx)
		p.code(err, hypervisor.CodeUnsupported, "ListVMs without %s", hypervisor.CapList)
	}
	if !p.has(hypervisor.CapLockState) {
		if st := p.status(p.vm()); st.Lock != hypervisor.LockUnknown {
			p.Errorf("Status reports lock %q without %s; want %q (§3.3)", st.Lock, hypervisor.CapLockState, hypervisor.LockUnknown)
		}
	}
	for _, op := range p.vmOps() {
		if op.cap == "" || p.has(op.cap) {
			continue
		}
		p.code(op.call(p.ctx, p.vm()), hypervisor.CodeUnsupported, "%s without %s", op.name, op.cap)
	}
	p.Logf("undeclared: %s", hypervisor.Capabilities(missing))
}

// guestOps are the guest operations' names in vmOps.
var guestOps = []string{hypervisor.OpCopyIn, hypervisor.OpExec, hypervisor.OpCopyOut}

// checkUndeclaredGuest tries the guest operations the driver leaves out
// where a driver that has them after all would run them: on a running
// guest, ready for the declared ones.
func checkUndeclaredGuest(p *probe) {
	var undeclared []opCall
	for _, op := range p.vmOps() {
		if slices.Contains(guestOps, op.name) && !p.has(op.cap) {
			undeclared = append(undeclared, op)
		}
	}
	if len(undeclared) == 0 {
		p.Skipf("the driver declares every guest operation")
	}
	vm := p.vm()
	p.running(vm)
	if slices.ContainsFunc(anyGuest, p.has) {
		p.guestReady(vm)
	}
	for _, op := range undeclared {
		p.code(op.call(p.ctx, vm), hypervisor.CodeUnsupported, "%s on a running guest without %s", op.name, op.cap)
	}
}

func checkDeclared(p *probe) {
	if len(p.s.caps) == 0 {
		p.Skipf("the driver declares no capability")
	}
	if p.has(hypervisor.CapList) {
		_, err := p.d().ListVMs(p.ctx)
		if hypervisor.IsUnsupported(err) {
			p.Errorf("ListVMs answered unsupported though %s is declared: %v", hypervisor.CapList, err)
		}
	}
	if p.has(hypervisor.CapLockState) {
		if st := p.status(p.vm()); st.Lock == hypervisor.LockUnknown {
			p.Errorf("Status reports lock %q though %s is declared (§3.3)", st.Lock, hypervisor.CapLockState)
		}
	}
	for _, op := range p.declaredOps() {
		if op.cap == "" {
			continue
		}
		if err := op.call(p.ctx, p.vm()); hypervisor.IsUnsupported(err) {
			p.Errorf("%s answered unsupported though %s is declared: %v", op.name, op.cap, err)
		}
	}
}

// listed returns the listing, failing the check on an error.
func (p *probe) listed() []hypervisor.VM {
	p.Helper()
	vms, err := p.d().ListVMs(p.ctx)
	if err != nil {
		p.fatalf("ListVMs: %v", err)
	}
	return vms
}

func checkListIncludes(p *probe) {
	vms := p.listed()
	seen := map[string]bool{}
	ids := map[string]string{}
	for _, v := range vms {
		if v.Name == "" {
			p.Errorf("ListVMs lists a VM without a name (id %q)", v.ID)
		}
		if seen[v.Name] {
			p.Errorf("ListVMs lists %q twice", v.Name)
		}
		seen[v.Name] = true
		if v.ID != "" {
			if other, dup := ids[v.ID]; dup {
				p.Errorf("VMs %q and %q have the same id %q", other, v.Name, v.ID)
			}
			ids[v.ID] = v.Name
		}
		if !v.Power.Valid() {
			p.Errorf("VM %q is listed with power state %q, which is not a normalized state (§3.2)", v.Name, v.Power)
		}
	}
	for _, vm := range []string{p.s.target.VM, p.s.target.PeerVM, p.s.target.LockVM, p.s.target.DeadlineVM, p.s.target.UnmappedVM} {
		if vm != "" && !seen[vm] {
			p.Errorf("ListVMs does not list %q, which Status knows", vm)
		}
	}
	p.Logf("%d VMs listed", len(vms))
}

func checkListStable(p *probe) {
	names := func(vms []hypervisor.VM) []string {
		out := make([]string, len(vms))
		for i, v := range vms {
			out[i] = v.Name
		}
		return out
	}
	first, second := names(p.listed()), names(p.listed())
	if !slices.Equal(first, second) {
		p.Errorf("two listings differ in order: %v, then %v", first, second)
	}
}

func checkErrorDetail(p *probe) {
	for _, op := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{hypervisor.OpStatus, func(ctx context.Context) error { _, err := p.d().Status(ctx, missingVM); return err }},
		{hypervisor.OpStart, func(ctx context.Context) error { return p.d().Start(ctx, missingVM) }},
	} {
		err := op.call(p.ctx)
		var he *hypervisor.Error
		switch {
		case err == nil:
			p.Errorf("%s of a VM that does not exist succeeded", op.name)
		case !errors.As(err, &he):
			p.Errorf("%s: error %T %q is not a *hypervisor.Error", op.name, err, err)
		default:
			if he.Op != op.name {
				p.Errorf("%s: Error.Op is %q, want %q", op.name, he.Op, op.name)
			}
			if he.VM != missingVM {
				p.Errorf("%s: Error.VM is %q, want %q", op.name, he.VM, missingVM)
			}
			if he.Message == "" {
				p.Errorf("%s: Error.Message is empty; carry the hypervisor's own words", op.name)
			}
		}
	}
}
