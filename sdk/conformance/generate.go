package conformance

import (
	"hash/fnv"
	"math"
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
	last      string           // the VM of the last step
	off       map[feature]bool // the kinds of step this sequence leaves out
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

// dice is the randomness of one step, from one small draw of rapid's.
// Each decision of the step reads a number of its own, by name, so that a
// step keeps its decisions when a step before it is left out and the
// options change around them: rapid shortens a sequence by leaving steps
// out, and a step whose meaning then changed would make every try fail
// to show the deviation. One 16-bit draw a step also keeps rapid's other
// tries (smaller draws) few, and each try is a whole sequence against the
// driver. (rapid's own integers lean towards small values, which would
// lean every choice towards its first option.)
type dice struct{ seed uint64 }

func roll(t *rapid.T, label string) dice {
	return dice{seed: uint64(rapid.Uint16().Draw(t, label))}
}

// u is the step's number named name, in (0, 1).
func (d dice) u(name string) float64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	x := h.Sum64() ^ (d.seed+1)*0x9e3779b97f4a7c15
	// splitmix64's finalizer, so that near seeds give unrelated numbers.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return (float64(x>>11) + 0.5) / (1 << 53)
}

// intn is the step's number named name, in [0, n).
func (d dice) intn(name string, n int) int { return min(n-1, int(d.u(name)*float64(n))) }

// chance is true with probability percent/100.
func (d dice) chance(name string, percent int) bool { return d.u(name)*100 < float64(percent) }

// option is a step the generator may draw: its name among the options of
// one decision, its weight, and how to build it.
type option struct {
	key   string
	w     int
	build func(d dice) Step
}

func newGenerator(x *explorer, t *rapid.T) *generator {
	g := &generator{x: x, vms: map[string]*planVM{}, nextFile: 1, off: map[feature]bool{}}
	d := roll(t, "sequence")
	g.deadlines = x.timing.Deadline < x.timing.Settle && d.chance("deadlines", 20)
	// Swarm: each sequence leaves some kinds of step out, so that the
	// ones left in come often enough to reach deep (a file written,
	// stopped, restored and looked for) instead of every kind a little.
	for f := range features {
		g.off[f] = d.chance("leave out "+featureNames[f], 40)
	}
	if g.off[fPowerOff] && g.off[fEmergency] {
		g.off[fPowerOff] = false
	}
	for _, vm := range x.order {
		g.vms[vm] = &planVM{}
	}
	return g
}

// feature is a kind of step a sequence may leave out.
type feature int

const (
	fGuest feature = iota
	fLock
	fPeer
	fMissing
	fUndeclared
	fWatch
	fTogether
	fRestore
	fCleanup
	fUnlock
	fACPI
	fPowerOff
	fEmergency
	fReads
	features
)

var featureNames = [features]string{"guest", "lock", "peer", "missing", "undeclared", "watch", "together",
	"restore", "cleanup", "unlock", "acpi", "poweroff", "emergency", "reads"}

// allows reports whether the sequence takes st, by the kinds of step it
// leaves out.
func (g *generator) allows(st Step) bool {
	t := g.x.s.target
	for s := &st; s != nil; s = s.With {
		var fs []feature
		switch {
		case isGuest(s.Op):
			fs = append(fs, fGuest)
		case s.Op == stepWatch:
			fs = append(fs, fWatch)
		case s.Op == stepRestore:
			fs = append(fs, fRestore)
		case s.Op == stepCleanup:
			fs = append(fs, fCleanup)
		case s.Op == stepUnlock:
			fs = append(fs, fUnlock)
		case s.Op == stepInfo || s.Op == stepList:
			fs = append(fs, fReads)
		case s.Op == stepStop:
			fs = append(fs, map[hypervisor.StopMethod]feature{hypervisor.StopACPI: fACPI, hypervisor.StopPowerOff: fPowerOff, hypervisor.StopEmergency: fEmergency}[s.Method])
		}
		switch s.VM {
		case t.LockVM:
			fs = append(fs, fLock)
		case t.PeerVM:
			fs = append(fs, fPeer)
		case missingVM:
			fs = append(fs, fMissing)
		}
		if c := capOf(*s); c != "" && !g.x.caps.Has(c) {
			fs = append(fs, fUndeclared)
		}
		if st.With != nil {
			fs = append(fs, fTogether)
		}
		for _, f := range fs {
			if g.off[f] {
				return false
			}
		}
	}
	return true
}

// pick draws one of the options the sequence takes, by weight: each
// option's own number, scaled by its weight, races the others', so that
// an option keeps winning when others come and go (a status read when the
// sequence takes none).
func (g *generator) pick(d dice, decision string, options []option) Step {
	best, bestKey := Step{Op: stepStatus, VM: g.x.s.target.VM}, math.Inf(1)
	for _, o := range options {
		if o.w <= 0 {
			continue
		}
		st := o.build(d)
		if !g.allows(st) {
			continue
		}
		if k := -math.Log(d.u(decision+" "+o.key)) / float64(o.w); k < bestKey {
			best, bestKey = st, k
		}
	}
	return best
}

// draw draws the next step and notes it in the plan.
func (g *generator) draw(t *rapid.T) Step {
	d := roll(t, "step")
	x := g.x
	target := x.s.target
	var vms []option
	add := func(w int, vm string) {
		if vm != "" {
			vms = append(vms, option{"vm " + vm, w, func(dice) Step { return Step{VM: vm} }})
		}
	}
	add(12, target.VM)
	add(3, target.PeerVM)
	add(6, target.LockVM)
	if g.deadlines {
		add(2, target.DeadlineVM)
	}
	add(1, target.UnmappedVM)
	add(4, missingVM)
	add(5, "-") // no VM: info, list, two VMs at once
	var vm string
	if g.last != "" && d.chance("same VM", 60) {
		vm = g.last // a VM's story goes on
	} else {
		vm = g.pick(d, "vm", vms).VM
	}
	var st Step
	switch vm {
	case "-":
		st = g.pick(d, "general", g.general())
	case target.UnmappedVM:
		st = Step{Op: stepStatus, VM: vm}
	case missingVM:
		st = g.pick(d, "missing", g.onMissing())
		st.VM = vm
	default:
		st = g.pick(d, "op", g.options(vm))
	}
	g.apply(st)
	if st.With != nil {
		g.apply(*st.With)
	}
	if g.vms[vm] != nil && vm != target.DeadlineVM {
		g.last = vm // not DeadlineVM: one restore of it cut short tells what it can
	}
	return st
}

// general are the steps on no VM or on two.
func (g *generator) general() []option {
	opts := []option{
		{"info", 3, func(dice) Step { return Step{Op: stepInfo} }},
		{"list", 3, func(dice) Step { return Step{Op: stepList} }},
	}
	if peer := g.x.s.target.PeerVM; peer != "" {
		vm := g.x.s.target.VM
		both := func(key string, w int, build func(vm string) Step) option {
			return option{key, w, func(d dice) Step {
				a, b := build(vm), build(peer)
				a.Wait = d.chance("both wait", 60)
				a.With = &b
				return a
			}}
		}
		opts = append(opts, both("both start", 3, func(vm string) Step { return Step{Op: stepStart, VM: vm} }))
		if m := g.x.s.forcefulStop(); m != "" {
			opts = append(opts, both("both stop", 3, func(vm string) Step { return Step{Op: stepStop, VM: vm, Method: m} }))
		}
		if g.x.caps.Has(hypervisor.CapRestore) && g.x.baseline(vm) != "" && g.x.baseline(peer) != "" {
			opts = append(opts, both("both restore", 8, func(vm string) Step {
				return Step{Op: stepRestore, VM: vm, Snapshot: g.x.baseline(vm)}
			}))
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
		w := 1
		if st.Op == stepStatus || st.Op == stepWatch {
			w = 3 // the two reads, one answering a value, one a stream
		}
		opts = append(opts, option{st.String(), w, func(dice) Step { return st }})
	}
	return opts
}

// deadline draws the caller's deadline of an operation: in a sequence of
// short deadlines, now and then Timing.Deadline or three times it.
func (g *generator) deadline(d dice, percent int) time.Duration {
	if !g.deadlines || !d.chance("short", percent) {
		return 0
	}
	return []time.Duration{g.x.timing.Deadline, 3 * g.x.timing.Deadline}[d.intn("deadline", 2)]
}

// options are the steps on a VM of the target, weighed by its plan: the
// step that takes the VM's story on (a start for a VM off, files for a
// running guest, a stop once they are written, a restore after it, a look
// for the files after that) weighs about as much as all the others.
func (g *generator) options(vm string) []option {
	x, p := g.x, g.vms[vm]
	target := x.s.target
	var opts []option
	add := func(key string, w int, build func(d dice) Step) {
		if w > 0 {
			opts = append(opts, option{key, w, build})
		}
	}
	has := x.caps.Has
	start := func(d dice) Step {
		return Step{Op: stepStart, VM: vm, Wait: d.chance("start wait", 60), Deadline: g.deadline(d, 30)}
	}
	restore := func(d dice) Step {
		return Step{Op: stepRestore, VM: vm, Snapshot: g.snapshot(d, vm), Wait: d.chance("restore wait", 70), Deadline: g.deadline(d, 40)}
	}
	add("status", 2, func(dice) Step { return Step{Op: stepStatus, VM: vm} })
	add("settle", 2, func(dice) Step { return Step{Op: stepSettle, VM: vm} })
	if vm == target.DeadlineVM {
		// Its restores take long: what it is for is being cut short.
		if has(hypervisor.CapRestore) {
			add("restore", 12, func(d dice) Step { return Step{Op: stepRestore, VM: vm, Deadline: g.deadline(d, 90)} })
		}
		if has(hypervisor.CapCleanup) {
			add("cleanup", 6, func(d dice) Step { return Step{Op: stepCleanup, VM: vm, Restore: true, Deadline: g.deadline(d, 90)} })
		}
		add("start", 2, func(dice) Step { return Step{Op: stepStart, VM: vm, Wait: true} })
		add("stop", 2, g.stop(vm, 0))
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
		add("start", 5, start)
		if has(hypervisor.CapRestore) {
			add("restore", 2, restore)
		}
		switch {
		case p.acpi:
			// The power button was pressed: the next rung, while the VM is
			// on its way off (§5.5).
			add("next rung", 30, func(d dice) Step {
				st := g.stop(vm, 0)(d)
				st.Wait = false
				return st
			})
			add("stop", 10, g.stop(vm, 30))
		case guest && present > 0:
			add("stop", 25, g.stop(vm, 30))
		case guest:
			add("stop", 8, g.stop(vm, 30))
		default:
			add("stop", 40, g.stop(vm, 30))
		}
		if guest {
			g.guestOptions(vm, p, present, erased, small, add)
		}
	} else {
		add("stop", 3, g.stop(vm, 20))
		switch {
		case p.stopped && vm == target.LockVM:
			// Off with its session held: what each operation does to it.
			add("start", 10, start)
			if has(hypervisor.CapStopEmergency) {
				add("emergency", 15, func(d dice) Step {
					return Step{Op: stepStop, VM: vm, Method: hypervisor.StopEmergency, Wait: d.chance("emergency wait", 50)}
				})
			}
			if has(hypervisor.CapUnlock) {
				add("unlock", 15, func(d dice) Step {
					return Step{Op: stepUnlock, VM: vm, Wait: d.chance("unlock wait", 60), Deadline: g.deadline(d, 30)}
				})
			}
			if has(hypervisor.CapRestore) {
				add("restore", 15, restore)
			}
		case (p.ran || present > 0) && has(hypervisor.CapRestore):
			add("restore", 40, restore)
			add("start", 10, start)
		case erased > 0:
			add("start", 45, start) // restored since files were written: are they gone?
		default:
			add("start", 40, start)
			if has(hypervisor.CapRestore) {
				add("restore", 8, restore)
			}
		}
		if guest {
			add("guest", 3, func(d dice) Step { return g.guestStep(d, vm, p) })
		}
	}
	if has(hypervisor.CapCleanup) {
		add("cleanup", 3, func(d dice) Step {
			st := Step{Op: stepCleanup, VM: vm, Restore: d.chance("cleanup restore", 70), Deadline: g.deadline(d, 40)}
			if st.Restore {
				st.Snapshot = g.snapshot(d, vm)
			}
			return st
		})
	}
	if has(hypervisor.CapUnlock) {
		add("unlock", 2, func(d dice) Step {
			return Step{Op: stepUnlock, VM: vm, Wait: d.chance("unlock wait", 30), Deadline: g.deadline(d, 30)}
		})
	}
	if has(hypervisor.CapWatch) {
		if p.watching {
			add("unwatch", 5, func(dice) Step { return Step{Op: stepUnwatch, VM: vm} })
		} else {
			add("watch", 2, func(dice) Step { return Step{Op: stepWatch, VM: vm} })
		}
	}
	if undeclared := g.undeclared(vm, guest); len(undeclared) > 0 {
		add("undeclared", 2, func(d dice) Step {
			st := undeclared[d.intn("undeclared", len(undeclared))]
			st.Wait = p.on
			return st
		})
	}
	add("together", 10, func(d dice) Step { return g.together(d, vm) })
	return opts
}

// guestOptions adds the guest operations on the running guest of vm.
func (g *generator) guestOptions(vm string, p *planVM, present, erased, small int, add func(string, int, func(dice) Step)) {
	has := g.x.caps.Has
	if has(hypervisor.CapGuestCopyIn) {
		w := 6
		if present == 0 && erased == 0 {
			w = 40
		}
		add("copy-in", w, func(d dice) Step { return g.copyIn(d, vm, p) })
	}
	if has(hypervisor.CapGuestCopyOut) {
		w := 2
		switch {
		case erased > 0:
			w = 25
		case present > 0:
			w = 20
		}
		add("copy-out", w, func(d dice) Step {
			return Step{Op: stepCopyOut, VM: vm, File: g.someFile(d, p, false), Wait: d.chance("copy-out wait", 85), Deadline: g.deadline(d, 20)}
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
		add("cat", w, func(d dice) Step {
			return Step{Op: stepCat, VM: vm, File: g.someFile(d, p, true), Wait: d.chance("cat wait", 85), Deadline: g.deadline(d, 20)}
		})
		add("sleep", 4, func(d dice) Step {
			return Step{Op: stepSleep, VM: vm, Timeout: g.x.execTimeout(), Wait: d.chance("sleep wait", 85), Deadline: g.deadline(d, 50)}
		})
		add("flood", 2, func(d dice) Step {
			// The suite's own bound now and then, else fewer bytes.
			max := FloodLimit
			if d.chance("flood max", 50) {
				max = 1 + d.intn("flood bytes", FloodLimit)
			}
			return Step{Op: stepFlood, VM: vm, Max: max, Wait: d.chance("flood wait", 85), Deadline: g.deadline(d, 20)}
		})
	}
}

// smallFile is the largest file the model prints with Exec: output a
// driver may cut to a bound it documents is never longer.
const smallFile = 4 << 10

// copyIn draws a copy into the guest: a new file or one written before,
// of a size around 64 KiB now and then, where a copy that stops at a
// buffer's end shows.
func (g *generator) copyIn(d dice, vm string, p *planVM) Step {
	st := Step{Op: stepCopyIn, VM: vm, Wait: d.chance("copy-in wait", 85), Deadline: g.deadline(d, 20)}
	sizes := [][2]int{{1, smallFile}, {1, smallFile}, {smallFile, 60 << 10}, {60 << 10, 200 << 10}, {60 << 10, 200 << 10}}
	size := sizes[d.intn("size class", len(sizes))]
	st.Size = size[0] + d.intn("size", size[1]-size[0]+1)
	if len(p.files) > 0 && d.chance("overwrite", 25) {
		st.File = p.files[d.intn("overwritten", len(p.files))].n
	} else {
		st.File = g.nextFile
	}
	return st
}

// someFile draws a file the plan wrote, the erased ones first, or a file
// never written; small keeps to the files Exec may print whole.
func (g *generator) someFile(d dice, p *planVM, small bool) int {
	var files []int
	for _, erasedFirst := range []bool{true, false} {
		for _, f := range p.files {
			if f.erased == erasedFirst && (!small || f.size <= smallFile) {
				files = append(files, f.n)
			}
		}
	}
	if len(files) == 0 || d.chance("never written", 10) {
		return g.nextFile
	}
	return files[d.intn("file", len(files))]
}

// guestStep draws a guest operation on a VM the plan has off, issued at
// once.
func (g *generator) guestStep(d dice, vm string, p *planVM) Step {
	var opts []option
	if g.x.caps.Has(hypervisor.CapGuestCopyIn) {
		opts = append(opts, option{"copy-in", 1, func(d dice) Step { return g.copyIn(d, vm, p) }})
	}
	if g.x.caps.Has(hypervisor.CapGuestCopyOut) {
		opts = append(opts, option{"copy-out", 1, func(d dice) Step { return Step{Op: stepCopyOut, VM: vm, File: g.someFile(d, p, false)} }})
	}
	if g.x.caps.Has(hypervisor.CapGuestExec) {
		opts = append(opts, option{"cat", 1, func(d dice) Step { return Step{Op: stepCat, VM: vm, File: g.someFile(d, p, true)} }})
	}
	st := g.pick(d, "guest off", opts)
	st.Wait = false
	return st
}

// stop draws a stop by a declared method.
func (g *generator) stop(vm string, wait int) func(d dice) Step {
	return func(d dice) Step {
		weights := map[hypervisor.StopMethod]int{hypervisor.StopACPI: 2, hypervisor.StopPowerOff: 5, hypervisor.StopEmergency: 4}
		var opts []option
		for _, m := range g.x.s.stopMethods() {
			opts = append(opts, option{string(m), weights[m], func(dice) Step { return Step{Op: stepStop, VM: vm, Method: m} }})
		}
		st := g.pick(d, "method", opts)
		st.Wait = d.chance("stop wait", wait)
		st.Deadline = g.deadline(d, 30)
		return st
	}
}

// snapshot draws the snapshot of a restore: one the target names for the
// VM, the current one (an empty name), or one the VM does not have.
func (g *generator) snapshot(d dice, vm string) string {
	opts := []option{
		{"baseline", 4, func(dice) Step { return Step{Snapshot: g.x.baseline(vm)} }},
		{"current", 2, func(dice) Step { return Step{} }},
		{"missing", 1, func(dice) Step { return Step{Snapshot: missingSnapshot} }},
	}
	if other := g.x.s.target.OtherSnapshot; vm == g.x.s.target.VM && other != "" {
		opts = append(opts, option{"other", 4, func(dice) Step { return Step{Snapshot: other} }})
	}
	return g.pick(d, "snapshot", opts).Snapshot
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

// together draws two operations at once on vm: the same twice, or a
// start, a stop or a restore while a read of the VM runs.
func (g *generator) together(d dice, vm string) Step {
	x := g.x
	var ops []Step
	ops = append(ops, Step{Op: stepStart, VM: vm})
	if m := x.s.forcefulStop(); m != "" {
		ops = append(ops, Step{Op: stepStop, VM: vm, Method: m})
	}
	reads := len(ops) // the operations a read holding the session would refuse
	if x.caps.Has(hypervisor.CapRestore) && x.baseline(vm) != "" {
		ops = append(ops, Step{Op: stepRestore, VM: vm, Snapshot: x.baseline(vm)})
	}
	if x.caps.Has(hypervisor.CapUnlock) {
		ops = append(ops, Step{Op: stepUnlock, VM: vm})
	}
	if x.caps.Has(hypervisor.CapCleanup) {
		ops = append(ops, Step{Op: stepCleanup, VM: vm})
	}
	var first, second Step
	switch d.intn("together how", 3) {
	case 0:
		second = ops[d.intn("together op", len(ops))]
		first = second
	case 1:
		second = ops[d.intn("together read op", reads)]
		first = Step{Op: stepStatus, VM: vm}
	default:
		second = ops[d.intn("together read op", reads)]
		first = Step{Op: stepList}
		if !x.caps.Has(hypervisor.CapList) {
			first = Step{Op: stepStatus, VM: vm}
		}
	}
	first.Wait = d.chance("together wait", 50)
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
