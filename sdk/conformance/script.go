package conformance

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Step is one step of the model's exploration: one operation on one VM, or
// two issued at the same time. A sequence of steps is a script, one step a
// line (String); ParseStep reads a line back, so that a counterexample can
// be replayed as it was printed.
type Step struct {
	// Op is the operation: info, list, status, start, stop, unlock, restore,
	// cleanup, copy-in, copy-out, cat (Exec of Guest.Cat on a file), sleep
	// (Exec of Guest.Sleep), flood (Exec of Guest.Flood, asked for Max
	// bytes of its output), watch (open a watch that lasts until unwatch or
	// the end of the sequence), unwatch, or settle (wait until the VM's
	// transitions and what the model expects of them are over).
	Op string `json:"op"`
	// VM is the VM it acts on; empty for info and list.
	VM string `json:"vm,omitempty"`
	// Method is the stop method.
	Method hypervisor.StopMethod `json:"method,omitempty"`
	// Snapshot is the snapshot of a restore, or of a cleanup that restores;
	// empty for the current one.
	Snapshot string `json:"snapshot,omitempty"`
	// Restore asks a cleanup to restore.
	Restore bool `json:"restore,omitempty"`
	// File numbers a guest file of the sequence (copy-in, copy-out, cat);
	// Size is how many bytes copy-in writes to it.
	File int `json:"file,omitempty"`
	Size int `json:"size,omitempty"`
	// Timeout is the command's own timeout (sleep).
	Timeout time.Duration `json:"timeout,omitempty"`
	// Max is the request's max_output (flood): less than the command
	// writes, so that the driver must cut it and say so (§9.5).
	Max int `json:"max_output,omitempty"`
	// Deadline is the caller's deadline; zero is the long bound,
	// Timing.Settle.
	Deadline time.Duration `json:"deadline,omitempty"`
	// Wait has the step first wait until its VMs settled (no transition
	// under way, no lingering lock) and, for a guest operation on a running
	// VM, until the guest takes guest operations: what the core does before
	// it acts. Without it the operation reaches the VM wherever it is.
	Wait bool `json:"wait,omitempty"`
	// With is an operation issued at the same time, a moment after this
	// one began.
	With *Step `json:"with,omitempty"`
}

// The operations of a step.
const (
	stepInfo    = "info"
	stepList    = "list"
	stepStatus  = "status"
	stepStart   = "start"
	stepStop    = "stop"
	stepUnlock  = "unlock"
	stepRestore = "restore"
	stepCleanup = "cleanup"
	stepCopyIn  = "copy-in"
	stepCopyOut = "copy-out"
	stepCat     = "cat"
	stepSleep   = "sleep"
	stepFlood   = "flood"
	stepWatch   = "watch"
	stepUnwatch = "unwatch"
	stepSettle  = "settle"
)

// stepOps lists the operations a step may have.
var stepOps = []string{stepInfo, stepList, stepStatus, stepStart, stepStop, stepUnlock, stepRestore, stepCleanup,
	stepCopyIn, stepCopyOut, stepCat, stepSleep, stepFlood, stepWatch, stepUnwatch, stepSettle}

// bare is what a VM or snapshot name may be written as without quotes.
var bare = regexp.MustCompile(`^[A-Za-z0-9._:/@+-]+$`)

func quoteName(s string) string {
	if bare.MatchString(s) && !strings.Contains(s, "=") {
		return s
	}
	return strconv.Quote(s)
}

// String is the step as a line of a script, e.g.
// `restore subject snapshot=base deadline=50ms` or
// `start subject & start subject`.
func (s Step) String() string {
	var b strings.Builder
	b.WriteString(s.Op)
	if s.VM != "" {
		b.WriteString(" " + quoteName(s.VM))
	}
	if s.Method != "" {
		b.WriteString(" " + string(s.Method))
	}
	if s.Restore {
		b.WriteString(" restore")
	}
	if s.Op == stepRestore || s.Restore {
		if s.Snapshot != "" {
			b.WriteString(" snapshot=" + quoteName(s.Snapshot))
		}
	}
	if s.Op == stepCopyIn || s.Op == stepCopyOut || s.Op == stepCat {
		fmt.Fprintf(&b, " file=%d", s.File)
	}
	if s.Size > 0 {
		fmt.Fprintf(&b, " size=%d", s.Size)
	}
	if s.Max > 0 {
		fmt.Fprintf(&b, " max=%d", s.Max)
	}
	if s.Timeout > 0 {
		fmt.Fprintf(&b, " timeout=%s", s.Timeout)
	}
	if s.Deadline > 0 {
		fmt.Fprintf(&b, " deadline=%s", s.Deadline)
	}
	if s.Wait {
		b.WriteString(" settled")
	}
	if s.With != nil {
		b.WriteString(" & " + s.With.String())
	}
	return b.String()
}

// ParseStep reads a line of a script, as Step.String writes it.
func ParseStep(line string) (Step, error) {
	parts := strings.Split(line, " & ")
	if len(parts) > 2 {
		return Step{}, fmt.Errorf("step %q: at most two operations at once", line)
	}
	var steps [2]Step
	for i, p := range parts {
		st, err := parseOne(p)
		if err != nil {
			return Step{}, fmt.Errorf("step %q: %w", line, err)
		}
		steps[i] = st
	}
	if len(parts) == 2 {
		steps[0].With = &steps[1]
	}
	return steps[0], nil
}

func parseOne(text string) (Step, error) {
	words, err := splitWords(strings.TrimSpace(text))
	if err != nil {
		return Step{}, err
	}
	if len(words) == 0 {
		return Step{}, fmt.Errorf("no operation")
	}
	s := Step{Op: words[0]}
	known := false
	for _, op := range stepOps {
		known = known || op == s.Op
	}
	if !known {
		return Step{}, fmt.Errorf("unknown operation %q (one of %s)", s.Op, strings.Join(stepOps, ", "))
	}
	rest := words[1:]
	if s.Op != stepInfo && s.Op != stepList {
		if len(rest) == 0 {
			return Step{}, fmt.Errorf("%s needs a VM", s.Op)
		}
		s.VM, rest = rest[0], rest[1:]
	}
	for _, w := range rest {
		key, value, isKey := strings.Cut(w, "=")
		if !isKey {
			switch {
			case s.Op == stepStop && hypervisor.StopMethod(w).Valid() && s.Method == "":
				s.Method = hypervisor.StopMethod(w)
			case s.Op == stepCleanup && w == "restore":
				s.Restore = true
			case w == "settled":
				s.Wait = true
			default:
				return Step{}, fmt.Errorf("unexpected %q", w)
			}
			continue
		}
		switch key {
		case "snapshot":
			if s.Op != stepRestore && !s.Restore {
				return Step{}, fmt.Errorf("snapshot= only for restore and cleanup restore")
			}
			s.Snapshot = value
		case "file", "size", "max":
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 {
				return Step{}, fmt.Errorf("%s=%q: want a number", key, value)
			}
			switch key {
			case "file":
				s.File = n
			case "size":
				s.Size = n
			default:
				s.Max = n
			}
		case "timeout", "deadline":
			d, err := time.ParseDuration(value)
			if err != nil || d <= 0 {
				return Step{}, fmt.Errorf("%s=%q: want a positive duration", key, value)
			}
			if key == "timeout" {
				s.Timeout = d
			} else {
				s.Deadline = d
			}
		default:
			return Step{}, fmt.Errorf("unknown key %q", key)
		}
	}
	if s.Op == stepStop && s.Method == "" {
		return Step{}, fmt.Errorf("stop needs a method (acpi, poweroff or emergency)")
	}
	if s.Op == stepFlood && (s.Max <= 0 || s.Max >= FloodSize) {
		return Step{}, fmt.Errorf("flood needs max=B, fewer bytes than the %d the command writes", FloodSize)
	}
	return s, nil
}

// splitWords splits at spaces, keeping a double-quoted word (a VM name with
// spaces) whole.
func splitWords(s string) ([]string, error) {
	var out []string
	for s != "" {
		s = strings.TrimLeft(s, " ")
		if s == "" {
			break
		}
		end := strings.IndexByte(s, ' ')
		if i := strings.IndexByte(s, '"'); i >= 0 && (end < 0 || i < end) {
			prefix := s[:i]
			q, err := strconv.QuotedPrefix(s[i:])
			if err != nil {
				return nil, fmt.Errorf("unterminated quote in %q", s)
			}
			unq, _ := strconv.Unquote(q)
			out = append(out, prefix+unq)
			s = s[i+len(q):]
			continue
		}
		if end < 0 {
			end = len(s)
		}
		out = append(out, s[:end])
		s = s[end:]
	}
	return out, nil
}

// ParseScript reads a script: one step a line; blank lines and lines
// beginning with # are left out.
func ParseScript(text string) ([]Step, error) {
	var steps []Step
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		st, err := ParseStep(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		steps = append(steps, st)
	}
	return steps, nil
}
