package conformance

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Exploration bounds the model's exploration of a driver: random
// sequences of operations, each from the VMs at their baseline, held
// against the model until one deviates or the bounds are reached.
type Exploration struct {
	// Duration bounds the search. Zero, with Operations zero too, leaves
	// the model out.
	Duration time.Duration
	// Operations bounds the operations the search issues; zero leaves it
	// to Duration.
	Operations int
	// Seed draws the sequences: the same seed draws the same ones (a
	// deviation's Seed draws its sequence first). Zero picks one at random;
	// the report names it.
	Seed uint64
	// Shrink bounds the time spent shortening a sequence that deviated,
	// after the search: its first half rapid's shrinking of the draws the
	// sequence was made from, the rest leaving steps out of the script
	// that rapid left. Default the larger of Duration and a minute.
	Shrink time.Duration
	// ShrinkTo, if set, ends the shortening once the sequence has that
	// many steps or fewer; zero shortens it as far as Shrink allows.
	ShrinkTo int
	// Trace, if set, is told every step the search takes, with the number
	// of its sequence, as a line of a script.
	Trace func(sequence int, step string)
}

// enabled reports whether the exploration is to run.
func (e Exploration) enabled() bool { return e.Duration > 0 || e.Operations > 0 }

// ModelReport is what the model's exploration did and found.
type ModelReport struct {
	// Seed draws the same sequences again (Exploration.Seed).
	Seed uint64 `json:"seed"`
	// Sequences and Operations are how many the search ran; Calls counts
	// every call the model made, the reads that observe each step included.
	Sequences  int   `json:"sequences"`
	Operations int   `json:"operations"`
	Calls      int64 `json:"calls"`
	// Duration is how long the search took, and PerMinute its operations a
	// minute.
	Duration  time.Duration `json:"duration_ns"`
	PerMinute float64       `json:"operations_per_minute"`
	// Deviation is the first thing found against the contract, with the
	// shortest sequence that shows it; nil when none was.
	Deviation *Deviation `json:"deviation,omitempty"`
	// Error is what stopped the exploration short of its bounds, other than
	// a deviation: a VM it could not read or put back.
	Error string `json:"error,omitempty"`
}

// Summary is the report in one line.
func (m *ModelReport) Summary() string {
	s := fmt.Sprintf("model: %d operations in %d sequences in %s (%.0f a minute), seed %d",
		m.Operations, m.Sequences, m.Duration.Round(100*time.Millisecond), m.PerMinute, m.Seed)
	switch {
	case m.Deviation != nil:
		return s + ": deviation, " + m.Deviation.key()
	case m.Error != "":
		return s + ": stopped: " + m.Error
	}
	return s + ": no deviation"
}

// explorer runs the model against the driver of a session.
type explorer struct {
	s      *session
	ctx    context.Context
	opts   Exploration
	timing Timing
	guest  Guest
	caps   hypervisor.Capabilities
	info   hypervisor.Info
	// order are the VMs the model may change, in the target's order;
	// targetVMs every VM the target names, which a listing must show.
	order, targetVMs []string
	token            string
	calls            atomic.Int64

	mu       sync.Mutex
	listing  []string
	restored map[string]map[bool]hypervisor.PowerState // by VM, by clean: the power state a restore leaves
	full     map[string]time.Duration                  // a whole restore, by VM
	alone    map[string]time.Duration                  // the shortest restore alone, by VM
	cleanAt  map[string]string                         // the snapshot each VM was left clean at

	// The search: its bounds, what it did, what it found.
	begun, searchEnd, shrinkEnd time.Time
	shortenEnd                  time.Time
	searchTook                  time.Duration
	runs, sequences, ops        int
	first, best                 *Deviation
	err                         error
	release                     func()
}

func newExplorer(s *session, opts Exploration) *explorer {
	x := &explorer{
		s: s, ctx: s.ctx, opts: opts, timing: s.timing, guest: s.guest, caps: s.caps, info: s.info,
		token:    token(),
		restored: map[string]map[bool]hypervisor.PowerState{},
		full:     map[string]time.Duration{},
		alone:    map[string]time.Duration{},
		cleanAt:  map[string]string{},
	}
	t := s.target
	for _, vm := range []string{t.VM, t.PeerVM, t.LockVM, t.DeadlineVM} {
		if vm != "" {
			x.order = append(x.order, vm)
		}
	}
	x.targetVMs = append(x.targetVMs, x.order...)
	if t.UnmappedVM != "" {
		x.targetVMs = append(x.targetVMs, t.UnmappedVM)
	}
	return x
}

// explore runs the model's exploration of the session's driver.
func (s *session) explore(opts Exploration) *ModelReport {
	x := newExplorer(s, opts)
	return x.run()
}

// baseline is the snapshot the model restores vm to.
func (x *explorer) baseline(vm string) string {
	if rec := x.s.record(vm); rec != nil {
		return rec.snapshot
	}
	return ""
}

// execTimeout is the timeout the model gives a command that would run a
// minute: long enough for a guest to start it, short enough to be cut.
func (x *explorer) execTimeout() time.Duration {
	return max(2*x.timing.Deadline, 100*time.Millisecond)
}

// guestPath names a guest file of the exploration in Guest.Dir.
func (x *explorer) guestPath(name string) string {
	dir := x.guest.Dir
	name = "sandbox-model-" + x.token + "-" + name
	if strings.Contains(dir, `\`) {
		return strings.TrimRight(dir, `\`) + `\` + name
	}
	return path.Join(dir, name)
}

var writes atomic.Int64

// content is what a copy into the guest writes: size bytes of text that no
// other write of the exploration has.
func (x *explorer) content(file, size int) []byte {
	line := fmt.Sprintf("sandbox model %s write %d file %d\n", x.token, writes.Add(1), file)
	b := make([]byte, 0, size+len(line))
	for len(b) < size {
		b = append(b, line...)
	}
	return b[:size]
}

// firstListing is the order of the exploration's first listing.
func (x *explorer) firstListing(names []string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.listing == nil {
		x.listing = names
	}
	return x.listing
}

// fullRestore is how long a whole restore of vm takes, as measured.
func (x *explorer) fullRestore(vm string) time.Duration {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.full[vm]
}

// restoredAs holds the power state a restore of vm to snapshot left it in
// to what restores to it left it in before: the snapshot's, every time
// (§7.3), and a restore of a VM already clean there the same as one of a
// VM that ran (§7.4).
func (x *explorer) restoredAs(vm, snapshot string, p hypervisor.PowerState, clean bool) *Deviation {
	x.mu.Lock()
	defer x.mu.Unlock()
	key := vm + "\x00" + snapshot
	seen := x.restored[key]
	if seen == nil {
		seen = map[bool]hypervisor.PowerState{}
		x.restored[key] = seen
	}
	if other, ok := seen[!clean]; ok && other != p {
		what := map[bool]string{true: "clean", false: "that ran"}
		return deviate(rules("§7.4"), "restoring a VM already clean at a snapshot left it otherwise than restoring it after a run",
			"Restore(%q) of a VM %s left it %s; of a VM %s, %s", snapshot, what[clean], p, what[!clean], other)
	}
	if same, ok := seen[clean]; ok && same != p {
		return deviate(rules("§7.3"), "two restores to the same snapshot left the VM in different states",
			"Restore(%q) left it %s, before %s", snapshot, p, same)
	}
	seen[clean] = p
	return nil
}

// timeRestore notes how long a restore of vm alone took.
func (x *explorer) timeRestore(vm string, took time.Duration) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if a, ok := x.alone[vm]; !ok || took < a {
		x.alone[vm] = took
	}
	x.full[vm] = max(x.full[vm], took)
}

// overlapFloor is the restore time under which the model does not judge
// whether two restores overlapped: so short a time is the CPU's, and a
// busy machine's.
const overlapFloor = 100 * time.Millisecond

// overlap holds two restores of two VMs issued at once, which took both,
// to §13.1a: about as long as the longer alone, not the sum with one of
// them as quick as alone (oneWaited). A pair that looks one after the
// other is timed again, each alone and both at once, twice a round for up
// to four rounds, the shortest of each counting: a busy machine only adds
// time, and what counts is how the times of one moment compare.
func (x *explorer) overlap(q *sequence, a, b Step, both time.Duration) *Deviation {
	x.mu.Lock()
	da, oka := x.alone[a.VM]
	db, okb := x.alone[b.VM]
	x.mu.Unlock()
	if !oka || !okb || min(da, db) < overlapFloor || both <= max(da, db)+min(da, db)*3/4 {
		return nil
	}
	restore := func(st Step) error {
		x.calls.Add(1)
		return x.s.retryLocked(q.ctx, func() error { return x.s.d.Restore(q.ctx, st.VM, st.Snapshot) })
	}
	shortest := func(f func() error) (time.Duration, bool) {
		best := time.Duration(1<<63 - 1)
		for range 2 {
			var err error
			best = min(best, timed(func() { err = f() }))
			if err != nil {
				return 0, false // not the same situation any more; the steps after will tell
			}
		}
		return best, true
	}
	// Rounds, each time the shortest so far: a driver that makes one VM
	// wait looks so every round, a busy machine rarely twice.
	const rounds = 4
	da, db, both = 1<<63-1, 1<<63-1, 1<<63-1
	// done is how soon after their common start each was done, in the
	// quickest timing of both at once: the times of one moment compare.
	quickest, done := time.Duration(1<<63-1), [2]time.Duration{}
	for round := 1; ; round++ {
		ra, ok := shortest(func() error { return restore(a) })
		if !ok {
			return nil
		}
		rb, ok := shortest(func() error { return restore(b) })
		if !ok {
			return nil
		}
		rboth, ok := shortest(func() error {
			var wg sync.WaitGroup
			var errs [2]error
			var at [2]time.Duration
			begun := time.Now()
			for i, st := range []Step{a, b} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = restore(st)
					at[i] = time.Since(begun)
				}()
			}
			wg.Wait()
			if all := time.Since(begun); all < quickest {
				quickest, done = all, at
			}
			return errors.Join(errs[0], errs[1])
		})
		if !ok {
			return nil
		}
		da, db, both = min(da, ra), min(db, rb), min(both, rboth)
		if min(da, db) < overlapFloor || !oneWaited([2]time.Duration{da, db}, done, both) {
			return nil
		}
		if round == rounds {
			break
		}
	}
	return deviate(rules("§13.1a"), "restores of two VMs at once took about as long as one after the other",
		"%s and %s at once took %s at best, %s done after %s and %s after %s; alone %s and %s", a, b, both.Round(time.Millisecond),
		a, done[0].Round(time.Millisecond), b, done[1].Round(time.Millisecond), da.Round(time.Millisecond), db.Round(time.Millisecond))
}

// prepare brings every VM the model uses to its baseline, clean at its
// snapshot, and times a restore of each: how long a restore cut short
// would have gone on (§12.1b), and what two at once are held to (§13.1a).
func (x *explorer) prepare() error {
	for _, vm := range x.order {
		snap := x.baseline(vm)
		restore := snap != "" && x.caps.Has(hypervisor.CapRestore)
		ctx, cancel := context.WithTimeout(x.ctx, 4*x.timing.Settle)
		err := x.s.clean(ctx, vm, snap, restore)
		if err == nil && restore {
			var took time.Duration
			took = timed(func() { err = x.s.retryLocked(ctx, func() error { return x.s.d.Restore(ctx, vm, snap) }) })
			x.calls.Add(1)
			if err == nil {
				x.timeRestore(vm, took)
				var st hypervisor.Status
				if st, err = x.s.d.Status(ctx, vm); err == nil {
					if d := x.restoredAs(vm, snap, st.Power, true); d != nil {
						err = errors.New(d.Detail)
					}
					x.cleanAt[vm] = snap
				}
			}
		}
		cancel()
		if err != nil {
			return fmt.Errorf("bring VM %q to its baseline: %w", vm, err)
		}
	}
	return nil
}

// begin starts a sequence: every VM the model uses at its baseline (off,
// unlocked, clean at its snapshot), and the model's view of each from a
// first read.
func (x *explorer) begin() (*sequence, error) {
	q := &sequence{x: x, ctx: x.ctx, vms: map[string]*vmModel{}, watches: map[string]*watching{}, shortCalls: map[string]bool{}}
	x.mu.Lock()
	x.runs++
	run := x.runs
	x.mu.Unlock()
	// Each VM on its own, at the same time: a driver keeps operations on
	// different VMs apart (§13.1a).
	errs := make([]error, len(x.order))
	var wg sync.WaitGroup
	for i, vm := range x.order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := x.baselineVM(vm); err != nil {
				errs[i] = fmt.Errorf("bring VM %q to its baseline: %w", vm, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, vm := range x.order {
		st, ok := q.read(vm)
		if !ok {
			return nil, q.broken
		}
		v := &vmModel{name: vm, role: x.roleOf(vm), last: st, snapshot: st.CurrentSnapshot, snapKnown: true}
		x.mu.Lock()
		v.cleanAt = x.cleanAt[vm]
		x.mu.Unlock()
		q.vms[vm] = v
	}
	if diag := x.s.diagnostics(); diag != nil {
		q.diagAt = diag()
	}
	dir, err := os.MkdirTemp("", "sandbox-model-")
	if err != nil {
		return nil, err
	}
	q.dir = dir
	q.token = strconv.Itoa(run)
	return q, nil
}

// roleOf is the role vm has in the target.
func (x *explorer) roleOf(vm string) role {
	t := x.s.target
	switch vm {
	case t.PeerVM:
		return rolePeer
	case t.LockVM:
		return roleLock
	case t.DeadlineVM:
		return roleDeadline
	}
	return roleVM
}

// baselineVM brings vm to where every sequence starts: off-like,
// unlocked, and clean at its snapshot where the driver can restore.
func (x *explorer) baselineVM(vm string) error {
	ctx, cancel := context.WithTimeout(x.ctx, 4*x.timing.Settle)
	defer cancel()
	rec := x.s.record(vm)
	st, err := x.s.d.Status(ctx, vm)
	if err != nil {
		return err
	}
	x.calls.Add(1)
	x.mu.Lock()
	clean := x.cleanAt[vm]
	x.mu.Unlock()
	x.s.mu.Lock()
	restore := rec.snapshot != "" && x.caps.Has(hypervisor.CapRestore) &&
		(rec.ran || st.CurrentSnapshot != rec.snapshot || clean != rec.snapshot)
	x.s.mu.Unlock()
	x.s.mu.Lock()
	ran := rec.ran
	x.s.mu.Unlock()
	if !st.Power.IsOff() || st.Lock == hypervisor.LockLocked || restore {
		if err := x.s.clean(ctx, vm, rec.snapshot, restore); err != nil {
			return err
		}
	}
	x.s.mu.Lock()
	rec.touched, rec.ran = true, false
	x.s.mu.Unlock()
	if restore {
		x.mu.Lock()
		x.cleanAt[vm] = rec.snapshot
		x.mu.Unlock()
		if ran {
			// A restore of a VM that ran: what the snapshot's state is, for
			// §7.4 to hold the restores of a clean VM to.
			if st, err := x.s.d.Status(ctx, vm); err == nil && st.Power.IsOff() && st.CurrentSnapshot == rec.snapshot {
				x.calls.Add(1)
				x.mu.Lock()
				key := vm + "\x00" + rec.snapshot
				if x.restored[key] == nil {
					x.restored[key] = map[bool]hypervisor.PowerState{}
				}
				if _, ok := x.restored[key][false]; !ok {
					x.restored[key][false] = st.Power
				}
				x.mu.Unlock()
			}
		}
	}
	return nil
}

// end closes a sequence and keeps what the next one's baseline needs.
func (x *explorer) end(q *sequence) {
	for _, w := range q.watches {
		w.cancel()
	}
	os.RemoveAll(q.dir)
	x.mu.Lock()
	defer x.mu.Unlock()
	for vm, v := range q.vms {
		x.cleanAt[vm] = v.cleanAt
	}
}

// spent reports whether the search used up its bounds, with ops more
// operations under way.
func (x *explorer) spent(ops int) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.spentLocked(ops)
}

func (x *explorer) spentLocked(ops int) bool {
	if x.opts.Operations > 0 && x.ops+ops >= x.opts.Operations {
		return true
	}
	return x.opts.Duration > 0 && time.Now().After(x.searchEnd)
}

// prop is one run of rapid's: one sequence, while searching; after a
// deviation, the sequences rapid shortens it with.
func (x *explorer) prop(t *rapid.T) {
	x.release() // rapid has read its seed
	x.mu.Lock()
	searching := x.first == nil
	short := x.best != nil && x.opts.ShrinkTo > 0 && len(x.best.Script) <= x.opts.ShrinkTo
	skip := x.err != nil || x.ctx.Err() != nil || (searching && x.spentLocked(0)) ||
		(!searching && (short || time.Now().After(x.shrinkEnd)))
	x.mu.Unlock()
	if skip {
		return
	}
	begun := time.Now()
	q, err := x.begin()
	if err != nil {
		x.mu.Lock()
		if x.err == nil && x.ctx.Err() == nil {
			x.err = err
		}
		x.mu.Unlock()
		return
	}
	defer x.end(q)
	g := newGenerator(x, t)
	x.mu.Lock()
	seqNo := x.sequences + 1
	x.mu.Unlock()
	t.Repeat(map[string]func(*rapid.T){
		"step": func(t *rapid.T) {
			if q.over() || len(q.script) >= maxSteps || (searching && x.spent(int(q.ops.Load()))) {
				return
			}
			st := g.draw(t)
			q.run(st)
			if searching && x.opts.Trace != nil {
				x.opts.Trace(seqNo, st.String())
			}
			if q.dev != nil {
				// At once, so that rapid draws no step after it: the
				// sequence it shortens ends here.
				x.record(q, searching, time.Since(begun))
				raise(t, q.dev)
			}
		},
	})
	if !q.over() {
		q.ending = true
		q.finish()
	}
	x.record(q, searching, time.Since(begun))
	if q.dev != nil {
		raise(t, q.dev)
	}
}

// record keeps what a sequence did and found.
func (x *explorer) record(q *sequence, searching bool, took time.Duration) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if searching {
		x.sequences++
		x.ops += int(q.ops.Load())
		x.searchTook += took
		if q.broken != nil && q.dev == nil && x.ctx.Err() == nil && x.err == nil {
			x.err = q.broken
		}
	}
	if q.dev == nil || x.ctx.Err() != nil {
		return
	}
	d := q.dev
	d.Script = q.script
	d.Log = q.log
	if x.first == nil {
		d.Found = len(q.script)
		x.first = d
		// rapid's shrinking gets the first half of the bound, the
		// shortening of the script (shorten) the rest.
		now := time.Now()
		x.shrinkEnd = now.Add(x.shrinkBound() / 2)
		x.shortenEnd = now.Add(x.shrinkBound())
	}
	if d.Rules[0] == x.first.Rules[0] && (x.best == nil || len(d.Script) <= len(x.best.Script)) {
		d.Found = x.first.Found
		x.best = d
	}
}

func (x *explorer) shrinkBound() time.Duration {
	if x.opts.Shrink > 0 {
		return x.opts.Shrink
	}
	return max(x.opts.Duration, time.Minute)
}

// The rapid settings the model runs under, set once per process: rapid
// reads them from its command-line flags, which a test binary may not
// have parsed for rapid and a program never does.
const (
	// rapidRuns bounds the sequences of one exploration; its time and
	// operation bounds end it much sooner.
	rapidRuns = 200000
	// rapidSteps is the average length of a sequence, and maxSteps the
	// most steps one takes: a deviation found late in a long sequence
	// takes long to shorten.
	rapidSteps = 12
	maxSteps   = 24
)

var (
	rapidOnce sync.Once
	// rapidSeed is held from setting rapid's seed until the run that reads
	// it began, so that explorations at once each get their own.
	rapidSeed sync.Mutex
)

func configureRapid() {
	rapidOnce.Do(func() {
		// rapid asks testing.Short, which needs the testing flags, parsed;
		// outside a test binary they are registered and parsed here, empty.
		if flag.Lookup("test.short") == nil {
			testing.Init()
		}
		if !flag.Parsed() {
			_ = flag.CommandLine.Parse(nil)
		}
		for name, value := range map[string]string{
			"rapid.checks":     strconv.Itoa(rapidRuns),
			"rapid.steps":      strconv.Itoa(rapidSteps),
			"rapid.nofailfile": "true",
			"rapid.shrinktime": "24h", // the explorer bounds shrinking itself
			"rapid.v":          "false",
			"rapid.log":        "false",
		} {
			if err := flag.Set(name, value); err != nil {
				panic(fmt.Sprintf("conformance: rapid flag %s: %v", name, err))
			}
		}
	})
}

// run explores until a deviation, the bounds or the session's end.
func (x *explorer) run() *ModelReport {
	rep := &ModelReport{Seed: x.opts.Seed}
	if rep.Seed == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		rep.Seed = binary.LittleEndian.Uint64(b[:])>>1 | 1
	}
	if err := x.prepare(); err != nil {
		rep.Error = err.Error()
		return rep
	}
	configureRapid()
	x.begun = time.Now()
	x.searchEnd = x.begun.Add(x.opts.Duration)
	tb := &rapidTB{ctx: x.ctx}
	rapidSeed.Lock()
	x.release = sync.OnceFunc(rapidSeed.Unlock)
	if err := flag.Set("rapid.seed", strconv.FormatUint(rep.Seed, 10)); err != nil {
		x.release()
		rep.Error = err.Error()
		return rep
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		rapid.Check(tb, x.prop)
	}()
	<-done
	x.release()
	x.shorten()

	x.mu.Lock()
	defer x.mu.Unlock()
	rep.Sequences, rep.Operations, rep.Calls = x.sequences, x.ops, x.calls.Load()
	rep.Duration = x.searchTook
	if rep.Duration > 0 {
		rep.PerMinute = float64(x.ops) / rep.Duration.Minutes()
	}
	if x.best != nil {
		rep.Deviation = x.best
		rep.Deviation.Seed = tb.seed()
	}
	if x.err != nil && rep.Deviation == nil {
		rep.Error = x.err.Error()
	}
	if p := tb.panicked(); p != "" && rep.Deviation == nil && rep.Error == "" {
		rep.Error = "the model failed: " + p
	}
	return rep
}

// shorten leaves steps out of the shortest script rapid found, a block at
// a time and then one by one, keeping each cut after which the script
// still deviates under the same rule, until ShrinkTo or the shrinking's
// bound. rapid shrinks the draws a sequence was made from, and each of
// its tries is a whole sequence against the driver, some of them steps
// that mean something else once a draw before them changed; a script's
// steps keep their meaning when others are left out, so that a few tries
// leave out what rapid had no time to.
func (x *explorer) shorten() {
	x.mu.Lock()
	best, first := x.best, x.first
	x.mu.Unlock()
	if best == nil {
		return
	}
	parse := func(script []string) ([]Step, bool) {
		steps := make([]Step, 0, len(script))
		for _, line := range script {
			st, err := ParseStep(line)
			if err != nil {
				return nil, false
			}
			steps = append(steps, st)
		}
		return steps, true
	}
	steps, ok := parse(best.Script)
	if !ok {
		return
	}
	done := func() bool {
		return x.ctx.Err() != nil || time.Now().After(x.shortenEnd) ||
			(x.opts.ShrinkTo > 0 && len(steps) <= x.opts.ShrinkTo)
	}
	for n := len(steps) / 2; n >= 1 && !done(); n /= 2 {
		for i := 0; i+n <= len(steps) && len(steps) > 1 && !done(); {
			d := x.try(slices.Concat(steps[:i], steps[i+n:]))
			if d == nil || d.Rules[0] != first.Rules[0] || len(d.Script) >= len(steps) {
				i += n
				continue
			}
			shorter, ok := parse(d.Script)
			if !ok {
				return
			}
			d.Found = first.Found
			x.mu.Lock()
			x.best = d
			x.mu.Unlock()
			steps = shorter
		}
	}
}

// try runs steps once as a sequence of the shortening, from the VMs at
// their baseline, and returns the deviation it showed, with its script
// up to it; nil if it showed none.
func (x *explorer) try(steps []Step) *Deviation {
	q, err := x.begin()
	if err != nil {
		return nil
	}
	defer x.end(q)
	for _, st := range steps {
		if q.over() {
			break
		}
		q.run(st)
	}
	if !q.over() {
		q.ending = true
		q.finish()
	}
	if q.dev == nil {
		return nil
	}
	q.dev.Script, q.dev.Log = q.script, q.log
	return q.dev
}

// rapidTB is what rapid reports through outside go test: it keeps rapid's
// messages, from which the failing sequence's seed is read.
type rapidTB struct {
	ctx    context.Context
	mu     sync.Mutex
	failed bool
	msgs   []string
}

var _ rapid.TB = (*rapidTB)(nil)

func (r *rapidTB) Helper()                         {}
func (r *rapidTB) Name() string                    { return "sandbox-conformance-model" }
func (r *rapidTB) Logf(format string, args ...any) {}
func (r *rapidTB) Log(args ...any)                 {}
func (r *rapidTB) Context() context.Context        { return r.ctx }
func (r *rapidTB) Skipf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}
func (r *rapidTB) Skip(args ...any) { r.Skipf("%s", fmt.Sprint(args...)) }
func (r *rapidTB) SkipNow()         { r.Skipf("skipped") }
func (r *rapidTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = true
	r.msgs = append(r.msgs, fmt.Sprintf(format, args...))
}
func (r *rapidTB) Error(args ...any) { r.Errorf("%s", fmt.Sprint(args...)) }
func (r *rapidTB) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}
func (r *rapidTB) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }
func (r *rapidTB) FailNow() {
	r.Fail()
	runtime.Goexit()
}
func (r *rapidTB) Fail() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = true
}
func (r *rapidTB) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

// panicked is rapid's report of a panic in the model itself, if any: a
// failure that is no deviation.
func (r *rapidTB) panicked() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if strings.HasPrefix(m, "[rapid] panic") {
			return m
		}
	}
	return ""
}

var seedFlag = regexp.MustCompile(`-rapid\.seed=(\d+)`)

// seed is the seed of the failing sequence, as rapid reported it.
func (r *rapidTB) seed() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if sub := seedFlag.FindStringSubmatch(m); sub != nil {
			n, _ := strconv.ParseUint(sub[1], 10, 64)
			return n
		}
	}
	return 0
}

// Replay runs a script once against the target, from the VMs at their
// baseline, and returns the first deviation from the model, or nil. The
// VMs are put back as they were found, as after Collect.
func Replay(ctx context.Context, target Target, steps []Step) (*Deviation, error) {
	s, err := open(ctx, target)
	if err != nil {
		return nil, err
	}
	x := newExplorer(s, Exploration{})
	var q *sequence
	err = x.prepare()
	if err == nil {
		q, err = x.begin()
	}
	if err == nil {
		for _, st := range steps {
			if q.over() {
				break
			}
			if e := x.check(st); e != nil {
				err = e
				break
			}
			q.run(st)
		}
		if err == nil && !q.over() {
			q.ending = true
			q.finish()
		}
		x.end(q)
		if err == nil && q.broken != nil && q.dev == nil {
			err = q.broken
		}
	}
	if ferr := s.finish(); ferr != nil && err == nil {
		err = fmt.Errorf("conformance: could not put the VMs back as they were: %w", ferr)
	}
	if err != nil || q == nil || q.dev == nil {
		return nil, err
	}
	q.dev.Script, q.dev.Log, q.dev.Found = q.script, q.log, len(q.script)
	return q.dev, nil
}

// check reports a step a script may not take against this target: a VM it
// does not name.
func (x *explorer) check(st Step) error {
	for s := &st; s != nil; s = s.With {
		switch {
		case s.Op == stepInfo || s.Op == stepList || s.VM == missingVM:
		case s.VM == x.s.target.UnmappedVM && s.VM != "":
			if s.Op != stepStatus {
				return fmt.Errorf("conformance: step %q: UnmappedVM %q is only read", st, s.VM)
			}
		case x.s.record(s.VM) == nil:
			return fmt.Errorf("conformance: step %q: VM %q is none of the target's", st, s.VM)
		case isGuest(s.Op) && s.VM != x.s.target.VM:
			return fmt.Errorf("conformance: step %q: guest operations are on Target.VM %q only", st, x.s.target.VM)
		}
	}
	return nil
}
