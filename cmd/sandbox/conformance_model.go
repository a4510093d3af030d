package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/sandboxhq/sandbox/sdk/conformance"
)

// modelFlags are the flags of `sandbox conformance` that run the model of
// the contract (docs/conformance.md, "The model").
type modelFlags struct {
	explore    time.Duration
	operations int
	seed       uint64
	replay     string
}

func (m *modelFlags) register(f *pflag.FlagSet) {
	f.DurationVar(&m.explore, "explore", 0, "after the checks, explore the model of the contract for `DURATION`: random sequences of operations, the first deviation shrunk to its shortest sequence (--run '^$' leaves the checks out)")
	f.IntVar(&m.operations, "explore-ops", 0, "end the exploration after `N` operations, whichever of it and --explore comes first")
	f.Uint64Var(&m.seed, "seed", 0, "the `SEED` the exploration draws its sequences from: a deviation's seed draws its sequence first (default random, and printed)")
	f.StringVar(&m.replay, "replay", "", "run the script of `FILE` (a deviation's steps, one a line; - for stdin) once from the VMs' baseline, instead of the suite")
}

// check reports flags that do not go together.
func (m *modelFlags) check() error {
	switch {
	case m.explore < 0:
		return usagef("--explore %s: must not be negative", m.explore)
	case m.operations < 0:
		return usagef("--explore-ops %d: must not be negative", m.operations)
	case m.seed != 0 && m.explore == 0 && m.operations == 0:
		return usagef("--seed needs --explore DURATION (or --explore-ops N): it draws the exploration's sequences")
	case m.replay != "" && (m.explore > 0 || m.operations > 0):
		return usagef("--replay runs one script; it does not go with --explore")
	}
	return nil
}

// exploration is the target's Exploration.
func (m *modelFlags) exploration() conformance.Exploration {
	return conformance.Exploration{Duration: m.explore, Operations: m.operations, Seed: m.seed}
}

// replayReport is `sandbox conformance --replay` in JSON.
type replayReport struct {
	Plugin    string                 `json:"plugin"`
	Script    []string               `json:"script"`
	Deviation *conformance.Deviation `json:"deviation,omitempty"`
}

// replayScript runs the script of --replay against the target.
func (a *app) replayScript(o conformanceFlags, target conformance.Target) error {
	var text []byte
	var err error
	if o.model.replay == "-" {
		text, err = io.ReadAll(os.Stdin)
	} else {
		text, err = os.ReadFile(o.model.replay)
	}
	if err != nil {
		return usagef("--replay: %v", err)
	}
	steps, err := conformance.ParseScript(string(text))
	if err != nil {
		return usagef("--replay %s: %v", o.model.replay, err)
	}
	if len(steps) == 0 {
		return usagef("--replay %s: no step in it", o.model.replay)
	}
	d, err := conformance.Replay(a.context(), target, steps)
	if err != nil {
		return err
	}
	out := replayReport{Plugin: o.plugin, Deviation: d}
	for _, st := range steps {
		out.Script = append(out.Script, st.String())
	}
	if err := a.emit(out, func(w io.Writer) {
		if d == nil {
			fmt.Fprintf(w, "%d steps replayed: no deviation from the model\n", len(steps))
			return
		}
		fmt.Fprintf(w, "deviation: %s", d)
	}); err != nil {
		return err
	}
	if d != nil {
		return errReported
	}
	return nil
}

// printModel prints the model's exploration after the checks' table: how
// much it ran, and the deviation it found with the script that shows it.
func printModel(w io.Writer, m *conformance.ModelReport) {
	if m == nil {
		return
	}
	fmt.Fprintf(w, "\n%s\n", m.Summary())
	if d := m.Deviation; d != nil {
		fmt.Fprintf(w, "\n%s", d)
		fmt.Fprintf(w, "  replay: sandbox conformance ... --replay FILE, FILE holding the steps above (or --explore ... --seed %d)\n", d.Seed)
		return
	}
	if m.Error != "" {
		fmt.Fprintf(w, "the model could not explore: %s\n", strings.TrimSpace(m.Error))
	}
}
