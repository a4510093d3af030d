package conformance

import (
	"flag"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// maxParallel bounds the checks under way at once. They spend their time
// waiting for VMs, so the bound is about the driver's load, not the CPU.
const maxParallel = 8

// schedule calls run for each check, several at once. A check begins once
// every check before it that shares one of its VMs has ended, so that each
// VM sees the checks in suite order; a check marked alone begins once every
// check before it has ended and holds back every check after it until it
// ends. run returns false to have no further check begun.
func schedule(checks []*check, vmsOf func(*check) []string, run func(*check) bool) {
	vms := make([][]string, len(checks))
	for i, c := range checks {
		vms[i] = vmsOf(c)
	}
	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		started = make([]bool, len(checks))
		ended   = make([]bool, len(checks))
		running int
		stop    bool
		wg      sync.WaitGroup
	)
	ready := func(i int) bool {
		if running >= maxParallel {
			return false
		}
		for j := range i {
			if ended[j] {
				continue
			}
			if checks[i].alone || checks[j].alone || slices.ContainsFunc(vms[i], func(vm string) bool {
				return slices.Contains(vms[j], vm)
			}) {
				return false
			}
		}
		return true
	}
	mu.Lock()
	for {
		pending := false
		for i := range checks {
			if ended[i] || started[i] {
				pending = pending || !ended[i]
				continue
			}
			pending = true
			if stop || !ready(i) {
				continue
			}
			started[i] = true
			running++
			wg.Add(1)
			go func() {
				defer wg.Done()
				ok := run(checks[i])
				mu.Lock()
				ended[i] = true
				running--
				stop = stop || !ok
				cond.Broadcast()
				mu.Unlock()
			}()
		}
		if !pending || (stop && running == 0) {
			break
		}
		cond.Wait()
	}
	mu.Unlock()
	wg.Wait()
}

// selectedByTestFlags reports whether go test's -run and -skip flags
// select the test named name ("TestConformance/Restore/Twice"), matching
// each slash-separated part of the patterns against the same part of the
// name as go test does, so that Run starts only the checks whose subtests
// will report.
func selectedByTestFlags(name string) bool {
	parts := strings.Split(name, "/")
	if pats := testFlag("test.run"); len(pats) > 0 {
		for i, re := range pats {
			if i < len(parts) && re != nil && !re.MatchString(parts[i]) {
				return false
			}
		}
	}
	if pats := testFlag("test.skip"); len(pats) > 0 && len(parts) >= len(pats) {
		for i, re := range pats {
			if re == nil || !re.MatchString(parts[i]) {
				return true
			}
		}
		return false
	}
	return true
}

// testFlag splits the pattern of a go test flag into its parts, each
// compiled; nil for an unset flag, a nil part for one that does not compile.
func testFlag(name string) []*regexp.Regexp {
	f := flag.Lookup(name)
	if f == nil || f.Value.String() == "" {
		return nil
	}
	var out []*regexp.Regexp
	for _, p := range splitPattern(f.Value.String()) {
		re, err := regexp.Compile(p)
		if err != nil {
			re = nil
		}
		out = append(out, re)
	}
	return out
}

// splitPattern splits a -run pattern at the slashes outside brackets and
// parentheses.
func splitPattern(p string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '\\':
			i++
		case '[', '(':
			depth++
		case ']', ')':
			depth--
		case '/':
			if depth == 0 {
				out = append(out, p[start:i])
				start = i + 1
			}
		}
	}
	return append(out, p[start:])
}
