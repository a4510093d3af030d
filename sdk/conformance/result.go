package conformance

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Outcome is how a check ended.
type Outcome string

// The outcomes.
const (
	Pass Outcome = "pass"
	Fail Outcome = "fail"
	Skip Outcome = "skip"
)

// Result is one check's outcome, as Collect reports it.
type Result struct {
	// Check is the check's stable name, e.g. "Restore/UnknownSnapshotIsNotFound".
	Check string `json:"check"`
	// Clause is the rule of docs/contract.md it enforces first, e.g.
	// "§7.1b".
	Clause string `json:"clause"`
	// Rules are every rule the check enforces, Clause first, so that a
	// failure names each rule it may be about.
	Rules []string `json:"rules"`
	// Outcome is pass, fail or skip.
	Outcome Outcome `json:"outcome"`
	// Duration is how long the check ran, its baseline and cleanup included.
	Duration time.Duration `json:"duration_ns"`
	// Message is why it failed, or why it was skipped.
	Message string `json:"message,omitempty"`
	// Log is what the check logged on the way, for a failure's context.
	Log []string `json:"log,omitempty"`
}

// Report is the outcome of one run of the suite.
type Report struct {
	// Driver is the driver's own description (§1.1).
	Driver hypervisor.Info `json:"driver"`
	// Results has one entry per check that matched, in suite order.
	Results []Result `json:"results"`
	// Unchecked lists the rules no check verified because the target did
	// not provide a fixture their checks need, and how to provide it.
	Unchecked []Unchecked `json:"unchecked,omitempty"`
	// Restore is why the run could not return a VM to the state it found
	// it in; empty when it could.
	Restore string `json:"restore,omitempty"`
	// Model is what the model's exploration did and found, when the target
	// asked for one (Target.Model).
	Model *ModelReport `json:"model,omitempty"`
}

// Unchecked is a rule of the contract that stayed unchecked for want of a
// fixture: a VM or snapshot in a situation the suite cannot produce
// through the contract itself.
type Unchecked struct {
	// Rule is the rule's mark in docs/contract.md, e.g. "§3.3b".
	Rule string `json:"rule"`
	// Checks are the checks that would have verified it.
	Checks []string `json:"checks"`
	// Fixtures are the Target fields that would have let them run.
	Fixtures []string `json:"fixtures"`
	// How says, per fixture, the flag of `sandbox conformance` that gives
	// it and what it must be.
	How []string `json:"how"`
}

// Count returns how many checks ended with o.
func (r *Report) Count(o Outcome) int {
	n := 0
	for _, res := range r.Results {
		if res.Outcome == o {
			n++
		}
	}
	return n
}

// Failed reports whether any check failed, the model found a deviation
// or could not explore, or a VM could not be restored.
func (r *Report) Failed() bool {
	return r.Count(Fail) > 0 || r.Restore != "" || (r.Model != nil && (r.Model.Deviation != nil || r.Model.Error != ""))
}

// reporter is what a check reports through: *testing.T under go test, a
// recorder under Collect. It is the subset of testing.TB that testify's
// require needs, plus skipping, logging and cleanups.
type reporter interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	FailNow()
	Skipf(format string, args ...any)
	Failed() bool
	Cleanup(func())
}

// recorder runs one check outside go test and keeps what it reported.
// FailNow and Skipf end the check's goroutine as testing.T does, so the
// checks are written once for both.
type recorder struct {
	mu       sync.Mutex
	errors   []string
	log      []string
	skip     string
	skipped  bool
	cleanups []func()
}

var _ reporter = (*recorder)(nil)

func (r *recorder) Helper() {}

func (r *recorder) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (r *recorder) FailNow() {
	r.mu.Lock()
	if len(r.errors) == 0 {
		r.errors = append(r.errors, "check stopped")
	}
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recorder) Skipf(format string, args ...any) {
	r.mu.Lock()
	r.skip, r.skipped = fmt.Sprintf(format, args...), true
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errors) > 0
}

func (r *recorder) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

// run runs body on a goroutine of its own, so that FailNow and Skipf can
// end it, then its cleanups, last registered first; a panic fails the
// check instead of the program.
func (r *recorder) run(body func(reporter)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer r.runCleanups()
		defer func() {
			if p := recover(); p != nil {
				buf := make([]byte, 8<<10)
				buf = buf[:runtime.Stack(buf, false)]
				r.Errorf("panic: %v\n%s", p, buf)
			}
		}()
		body(r)
	}()
	<-done
}

func (r *recorder) runCleanups() {
	for {
		r.mu.Lock()
		n := len(r.cleanups)
		if n == 0 {
			r.mu.Unlock()
			return
		}
		f := r.cleanups[n-1]
		r.cleanups = r.cleanups[:n-1]
		r.mu.Unlock()
		// A cleanup that fails the check must not skip the ones after it.
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer func() {
				if p := recover(); p != nil {
					r.Errorf("panic in cleanup: %v", p)
				}
			}()
			f()
		}()
		<-done
	}
}

// result turns what was recorded into a Result. A failure wins over a
// skip that came after it, as in go test.
func (r *recorder) result(c *check, d time.Duration) Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := Result{Check: c.name, Clause: c.clause, Rules: c.rules(), Duration: d, Log: r.log}
	switch {
	case len(r.errors) > 0:
		res.Outcome, res.Message = Fail, strings.Join(r.errors, "\n")
	case r.skipped:
		res.Outcome, res.Message = Skip, r.skip
	default:
		res.Outcome = Pass
	}
	return res
}
