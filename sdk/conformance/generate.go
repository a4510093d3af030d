package conformance

import (
	"math/rand/v2"
	"slices"
	"time"

	"pgregory.net/rapid"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// generator draws the steps of a sequence. It weighs the next step by a
// plan, what the steps drawn so far mean to do to each VM whatever the
// driver answered, so that a seed draws the same steps on every run; the
// weights lean towards steps that take a VM somewhere new (a started VM
// gets files, a VM with files gets stopped and restored, a restored one
// has its files looked for), where the contract's rules meet.
type generator struct {
	x         *explorer
	deadlines bool // this sequence gives some operations a short deadline
	vms       map[string]*planVM
	nextFile  int
	last      string // the VM of the last step
}

// planVM is what the steps drawn so far mean to do to a VM.
type planVM struct {
	on, stopped, watching bool
	acpi                  bool // the power button was pressed: next, the ladder's next rung
	ran                   bool // started since its last restore
	files                 []planFile
}

// planFile is a guest file the plan wrote.
type planFile struct {
	n, size int
	erased  bool
}

// option is a step the generator may draw, with its weight.
type option struct {
	w     int
	build func(r *rand.Rand) Step
}

func newGenerator(x *explorer, t *rapid.T) *generator {
	g := &generator{x: x, vms: map[string]*planVM{}, nextFile: 1}
	r := stepRand(t, "sequence")
	g.deadlines = x.timing.Deadline < x.timing.Settle && r.IntN(5) == 4
	for _, vm := range x.order {
		g.vms[vm] = &planVM{}
	}
	return g
}

// pick draws one of options by weight.
func pick(r *rand.Rand, options []option) Step {
	total := 0
	for _, o := range options {
		total += o.w
	}
	n := r.IntN(total)
	for _, o := range options {
		if n < o.w {
			return o.build(r)
		}
		n -= o.w
	}
	panic("unreachable")
}

// chance is true with probability percent/100.
func chance(r *rand.Rand, percent int) bool { return r.IntN(100) < percent }

// stepRand is the randomness of one step, from one small draw of rapid's.
// rapid shortens a sequence by leaving steps out and by making each draw
// smaller, one try at a time, and every try is a whole sequence against
// the driver: one 16-bit draw a step keeps the tries few. (rapid's own
// integers also lean towards small values, which would lean each choice
// towards its first option; a generator seeded by the draw does not.)
func stepRand(t *rapid.T, label string) *rand.Rand {
	seed := uint64(rapid.Uint16().Draw(t, label))
	return rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
}

// draw draws the next step and notes it in the plan.
func (g *generator) draw(t *rapid.T) Step {
	r := stepRand(t, "step")
	x := g.x
	var vms []option
	add := func(w int, vm string) {
		if vm != "" {
			vms = append(vms, option{w, func(*rand.Rand) Step { return Step{VM: vm} }})
		}
	}
	target := x.s.target
	add(12, target.VM)
	add(3, target.PeerVM)
	add(6, target.LockVM)
	if g.deadlines {
		add(2, target.DeadlineVM)
	}
	add(1, target.UnmappedVM)
	add(3, missingVM)
	add(3, "-") // no VM: info, list, two VMs at once
	var vm string
	if g.last != "" && chance(r, 60) {
		vm = g.last // a VM's story goes on
	} else {
		vm = pick(r, vms).VM
	}
	var st Step
	switch vm {
	case "-":
		st = pick(r, g.general())
	case target.UnmappedVM:
		st = Step{Op: stepStatus, VM: vm}
	case missingVM:
		st = pick(r, g.onMissing())
		st.VM = vm
	default:
		st = pick(r, g.options(vm))
	}
	g.apply(st)
	if st.With != nil {
		g.apply(*st.With)
	}
	if g.vms[vm] != nil && vm != x.s.target.DeadlineVM {
		g.last = vm // not DeadlineVM: one restore of it cut short tells what it can
	}
	return st
}

// general are the steps on no VM or on two.
func (g *generator) general() []option {
	opts := []option{
		{3, func(*rand.Rand) Step { return Step{Op: stepInfo} }},
		{3, func(*rand.Rand) Step { return Step{Op: stepList} }},
	}
	if peer := g.x.s.target.PeerVM; peer != "" {
		vm := g.x.s.target.VM
		both := func(op string, build func(r *rand.Rand, vm string) Step) option {
			return option{3, func(r *rand.Rand) Step {
				a, b := build(r, vm), build(r, peer)
				a.Wait = chance(r, 60)
				a.With = &b
				return a
			}}
		}
		opts = append(opts, both(stepStart, func(_ *rand.Rand, vm string) Step { return Step{Op: stepStart, VM: vm} }))
		if m := g.x.s.forcefulStop(); m != "" {
			opts = append(opts, both(stepStop, func(_ *rand.Rand, vm string) Step { return Step{Op: stepStop, VM: vm, Method: m} }))
		}
		if g.x.caps.Has(hypervisor.CapRestore) && g.x.baseline(vm) != "" && g.x.baseline(peer) != "" {
			o := both(stepRestore, func(_ *rand.Rand, vm string) Step {
				return Step{Op: stepRestore, VM: vm, Snapshot: g.x.baseline(vm)}
			})
			o.w = 1
			if !g.vms[vm].on && !g.vms[peer].on {
				o.w = 12 // both off: the two restores must overlap (§13.1a)
			}
			opts = append(opts, o)
		}
	}
	return opts
}

// onMissing are the operations tried on a VM that does not exist.
func (g *generator) onMissing() []option {
	var opts []option
	for _, st := range []Step{
		{Op: stepStatus}, {Op: stepWatch}, {Op: stepStart}, {Op: stepStop, Method: hypervisor.StopPowerOff},
		{Op: stepStop, Method: hypervisor.StopEmergency}, {Op: stepUnlock},
		{Op: stepRestore, Snapshot: g.x.baseline(g.x.s.target.VM)}, {Op: stepCleanup},
		{Op: stepCopyIn, File: 1, Size: 16}, {Op: stepCopyOut, File: 1}, {Op: stepCat, File: 1},
	} {
		opts = append(opts, option{1, func(*rand.Rand) Step { return st }})
	}
	return opts
}

// deadline draws the caller's deadline of an operation: in a sequence of
// short deadlines, now and then Timing.Deadline or three times it.
func (g *generator) deadline(r *rand.Rand, percent int) time.Duration {
	if !g.deadlines || !chance(r, percent) {
		return 0
	}
	return []time.Duration{g.x.timing.Deadline, 3 * g.x.timing.Deadline}[r.IntN(2)]
}

// options are the steps on a VM of the target, weighed by its plan: the
// step that takes the VM's story on (a start for a VM off, files for a
// running guest, a stop once they are written, a restore after it, a look
// for the files after that) weighs about as much as all the others.
func (g *generator) options(vm string) []option {
	x, p := g.x, g.vms[vm]
	target := x.s.target
	var opts []option
	add := func(w int, build func(r *rand.Rand) Step) {
		if w > 0 {
			opts = append(opts, option{w, build})
		}
	}
	has := x.caps.Has
	start := func(r *rand.Rand) Step {
		return Step{Op: stepStart, VM: vm, Wait: chance(r, 60), Deadline: g.deadline(r, 30)}
	}
	restore := func(r *rand.Rand) Step {
		return Step{Op: stepRestore, VM: vm, Snapshot: g.snapshot(r, vm), Wait: chance(r, 70), Deadline: g.deadline(r, 40)}
	}
	add(2, func(*rand.Rand) Step { return Step{Op: stepStatus, VM: vm} })
	add(2, func(*rand.Rand) Step { return Step{Op: stepSettle, VM: vm} })
	if vm == target.DeadlineVM {
		// Its restores take long: what it is for is being cut short.
		if has(hypervisor.CapRestore) {
			add(12, func(r *rand.Rand) Step { return Step{Op: stepRestore, VM: vm, Deadline: g.deadline(r, 90)} })
		}
		if has(hypervisor.CapCleanup) {
			add(6, func(r *rand.Rand) Step {
				return Step{Op: stepCleanup, VM: vm, Restore: true, Deadline: g.deadline(r, 90)}
			})
		}
		add(2, func(r *rand.Rand) Step { return Step{Op: stepStart, VM: vm, Wait: true} })
		add(2, g.stop(vm, 0))
		return opts
	}
	guest := vm == target.VM
	present, erased, small := 0, 0, 0
	for _, f := range p.files {
		switch {
		case f.erased:
			erased++
		default:
			present++
			if f.size <= smallFile {
				small++
			}
		}
	}
	if p.on {
		add(5, start)
		if has(hypervisor.CapRestore) {
			add(2, restore)
		}
		switch {
		case p.acpi:
			// The power button was pressed: the next rung, while the VM is
			// on its way off (§5.5).
			add(30, func(r *rand.Rand) Step {
				st := g.stop(vm, 0)(r)
				st.Wait = false
				return st
			})
			add(10, g.stop(vm, 30))
		case guest && present > 0:
			add(25, g.stop(vm, 30))
		case guest:
			add(8, g.stop(vm, 30))
		default:
			add(40, g.stop(vm, 30))
		}
		if guest {
			g.guestOptions(vm, p, present, erased, small, add)
		}
	} else {
		add(3, g.stop(vm, 20))
		switch {
		case p.stopped && vm == target.LockVM:
			// Off with its session held: what each operation does to it.
			add(10, start)
			if has(hypervisor.CapStopEmergency) {
				add(15, func(r *rand.Rand) Step {
					return Step{Op: stepStop, VM: vm, Method: hypervisor.StopEmergency, Wait: chance(r, 50)}
				})
			}
			if has(hypervisor.CapUnlock) {
				add(15, func(r *rand.Rand) Step {
					return Step{Op: stepUnlock, VM: vm, Wait: chance(r, 60), Deadline: g.deadline(r, 30)}
				})
			}
			if has(hypervisor.CapRestore) {
				add(15, restore)
			}
		case (p.ran || present > 0) && has(hypervisor.CapRestore):
			add(40, restore)
			add(10, start)
		case erased > 0:
			add(45, start) // restored since files were written: are they gone?
		default:
			add(40, start)
			if has(hypervisor.CapRestore) {
				add(8, restore)
			}
		}
		if guest {
			add(3, func(r *rand.Rand) Step { return g.guestStep(r, vm, p, false) })
		}
	}
	if has(hypervisor.CapCleanup) {
		add(3, func(r *rand.Rand) Step {
			st := Step{Op: stepCleanup, VM: vm, Restore: chance(r, 70), Deadline: g.deadline(r, 40)}
			if st.Restore {
				st.Snapshot = g.snapshot(r, vm)
			}
			return st
		})
	}
	if has(hypervisor.CapUnlock) {
		add(2, func(r *rand.Rand) Step {
			return Step{Op: stepUnlock, VM: vm, Wait: chance(r, 30), Deadline: g.deadline(r, 30)}
		})
	}
	if has(hypervisor.CapWatch) {
		if p.watching {
			add(5, func(*rand.Rand) Step { return Step{Op: stepUnwatch, VM: vm} })
		} else {
			add(2, func(*rand.Rand) Step { return Step{Op: stepWatch, VM: vm} })
		}
	}
	if undeclared := g.undeclared(vm, guest); len(undeclared) > 0 {
		add(2, func(r *rand.Rand) Step {
			st := undeclared[r.IntN(len(undeclared))]
			st.Wait = p.on
			return st
		})
	}
	add(6, func(r *rand.Rand) Step { return g.together(r, vm) })
	return opts
}

// guestOptions adds the guest operations on the running guest of vm.
func (g *generator) guestOptions(vm string, p *planVM, present, erased, small int, add func(int, func(*rand.Rand) Step)) {
	has := g.x.caps.Has
	if has(hypervisor.CapGuestCopyIn) {
		w := 6
		if present == 0 && erased == 0 {
			w = 40
		}
		add(w, func(r *rand.Rand) Step { return g.copyIn(r, vm, p) })
	}
	if has(hypervisor.CapGuestCopyOut) {
		w := 2
		switch {
		case erased > 0:
			w = 25
		case present > 0:
			w = 20
		}
		add(w, func(r *rand.Rand) Step {
			return Step{Op: stepCopyOut, VM: vm, File: g.someFile(r, p, false), Wait: chance(r, 85), Deadline: g.deadline(r, 20)}
		})
	}
	if has(hypervisor.CapGuestExec) {
		w := 4
		switch {
		case erased > 0:
			w = 20
		case small > 0:
			w = 15
		}
		add(w, func(r *rand.Rand) Step {
			return Step{Op: stepCat, VM: vm, File: g.someFile(r, p, true), Wait: chance(r, 85), Deadline: g.deadline(r, 20)}
		})
		add(4, func(r *rand.Rand) Step {
			return Step{Op: stepSleep, VM: vm, Timeout: g.x.execTimeout(), Wait: chance(r, 85), Deadline: g.deadline(r, 50)}
		})
	}
}

// smallFile is the largest file the model prints with Exec: output a
// driver may cut to a bound it documents is never longer.
const smallFile = 4 << 10

// copyIn draws a copy into the guest: a new file or one written before,
// of a size around 64 KiB now and then, where a copy that stops at a
// buffer's end shows.
func (g *generator) copyIn(r *rand.Rand, vm string, p *planVM) Step {
	st := Step{Op: stepCopyIn, VM: vm, Wait: chance(r, 85), Deadline: g.deadline(r, 20)}
	sizes := [][2]int{{1, smallFile}, {1, smallFile}, {smallFile, 60 << 10}, {60 << 10, 200 << 10}, {60 << 10, 200 << 10}}
	size := sizes[r.IntN(len(sizes))]
	st.Size = size[0] + r.IntN(size[1]-size[0]+1)
	if len(p.files) > 0 && chance(r, 25) {
		st.File = p.files[r.IntN(len(p.files))].n
	} else {
		st.File = g.nextFile
	}
	return st
}

// someFile draws a file the plan wrote, the erased ones first, or a file
// never written; small keeps to the files Exec may print whole.
func (g *generator) someFile(r *rand.Rand, p *planVM, small bool) int {
	var files []int
	for _, erasedFirst := range []bool{true, false} {
		for _, f := range p.files {
			if f.erased == erasedFirst && (!small || f.size <= smallFile) {
				files = append(files, f.n)
			}
		}
	}
	if len(files) == 0 || chance(r, 10) {
		return g.nextFile
	}
	return files[r.IntN(len(files))]
}

// guestStep draws a guest operation on a VM the plan has off.
func (g *generator) guestStep(r *rand.Rand, vm string, p *planVM, _ bool) Step {
	var opts []option
	if g.x.caps.Has(hypervisor.CapGuestCopyIn) {
		opts = append(opts, option{1, func(r *rand.Rand) Step { return g.copyIn(r, vm, p) }})
	}
	if g.x.caps.Has(hypervisor.CapGuestCopyOut) {
		opts = append(opts, option{1, func(r *rand.Rand) Step { return Step{Op: stepCopyOut, VM: vm, File: g.someFile(r, p, false)} }})
	}
	if g.x.caps.Has(hypervisor.CapGuestExec) {
		opts = append(opts, option{1, func(r *rand.Rand) Step { return Step{Op: stepCat, VM: vm, File: g.someFile(r, p, true)} }})
	}
	if len(opts) == 0 {
		return Step{Op: stepStatus, VM: vm}
	}
	st := pick(r, opts)
	st.Wait = false // on a VM that is off, at once
	return st
}

// stop draws a stop by a declared method.
func (g *generator) stop(vm string, wait int) func(r *rand.Rand) Step {
	return func(r *rand.Rand) Step {
		methods := g.x.s.stopMethods()
		if len(methods) == 0 {
			return Step{Op: stepStatus, VM: vm}
		}
		weights := map[hypervisor.StopMethod]int{hypervisor.StopACPI: 2, hypervisor.StopPowerOff: 5, hypervisor.StopEmergency: 4}
		var opts []option
		for _, m := range methods {
			opts = append(opts, option{weights[m], func(*rand.Rand) Step { return Step{Op: stepStop, VM: vm, Method: m} }})
		}
		st := pick(r, opts)
		st.Wait = chance(r, wait)
		st.Deadline = g.deadline(r, 30)
		return st
	}
}

// snapshot draws the snapshot of a restore: one the target names for the
// VM, the current one (an empty name), or one the VM does not have.
func (g *generator) snapshot(r *rand.Rand, vm string) string {
	opts := []option{
		{4, func(*rand.Rand) Step { return Step{Snapshot: g.x.baseline(vm)} }},
		{2, func(*rand.Rand) Step { return Step{} }},
		{1, func(*rand.Rand) Step { return Step{Snapshot: missingSnapshot} }},
	}
	if other := g.x.s.target.OtherSnapshot; vm == g.x.s.target.VM && other != "" {
		opts = append(opts, option{4, func(*rand.Rand) Step { return Step{Snapshot: other} }})
	}
	return pick(r, opts).Snapshot
}

// undeclared are the operations behind capabilities the driver does not
// declare, on vm.
func (g *generator) undeclared(vm string, guest bool) []Step {
	var out []Step
	for _, st := range []Step{
		{Op: stepStop, Method: hypervisor.StopACPI}, {Op: stepStop, Method: hypervisor.StopPowerOff},
		{Op: stepStop, Method: hypervisor.StopEmergency}, {Op: stepUnlock}, {Op: stepRestore}, {Op: stepCleanup},
		{Op: stepWatch}, {Op: stepCopyIn, File: 1, Size: 16}, {Op: stepCopyOut, File: 1}, {Op: stepCat, File: 1},
	} {
		if g.x.caps.Has(capOf(st)) || (isGuest(st.Op) && !guest) {
			continue
		}
		st.VM = vm
		out = append(out, st)
	}
	return out
}

// together draws two operations at once on vm: the same twice, or one
// while a read of the VM runs.
func (g *generator) together(r *rand.Rand, vm string) Step {
	x := g.x
	var ops []Step
	ops = append(ops, Step{Op: stepStart, VM: vm})
	if m := x.s.forcefulStop(); m != "" {
		ops = append(ops, Step{Op: stepStop, VM: vm, Method: m})
	}
	if x.caps.Has(hypervisor.CapRestore) && x.baseline(vm) != "" {
		ops = append(ops, Step{Op: stepRestore, VM: vm, Snapshot: x.baseline(vm)})
	}
	if x.caps.Has(hypervisor.CapUnlock) {
		ops = append(ops, Step{Op: stepUnlock, VM: vm})
	}
	if x.caps.Has(hypervisor.CapCleanup) {
		ops = append(ops, Step{Op: stepCleanup, VM: vm})
	}
	op := ops[r.IntN(len(ops))]
	var first Step
	switch r.IntN(4) {
	case 0:
		first = op
	case 1, 2:
		first = Step{Op: stepStatus, VM: vm}
	default:
		if !x.caps.Has(hypervisor.CapList) {
			first = Step{Op: stepStatus, VM: vm}
		} else {
			first = Step{Op: stepList}
		}
	}
	first.Wait = chance(r, 50)
	second := op
	first.With = &second
	return first
}

// apply notes a step in the plan.
func (g *generator) apply(st Step) {
	p := g.vms[st.VM]
	if p == nil {
		return
	}
	switch st.Op {
	case stepStart:
		p.on, p.stopped, p.acpi, p.ran = true, false, false, true
	case stepStop:
		switch {
		case st.Method != hypervisor.StopACPI:
			p.on, p.stopped, p.acpi = false, p.on || p.stopped, false
		case p.on:
			p.acpi = true
		}
	case stepRestore:
		if !p.on {
			p.ran = false
			for i := range p.files {
				p.files[i].erased = true
			}
		}
	case stepCleanup:
		p.on, p.stopped, p.acpi = false, false, false
		if st.Restore {
			p.ran = false
			for i := range p.files {
				p.files[i].erased = true
			}
		}
	case stepUnlock:
		p.stopped = false
	case stepCopyIn:
		if !p.on {
			return
		}
		i := slices.IndexFunc(p.files, func(f planFile) bool { return f.n == st.File })
		if i < 0 {
			p.files = append(p.files, planFile{n: st.File, size: st.Size})
			g.nextFile = max(g.nextFile, st.File+1)
		} else {
			p.files[i] = planFile{n: st.File, size: st.Size}
		}
	case stepWatch:
		p.watching = true
	case stepUnwatch:
		p.watching = false
	}
}
