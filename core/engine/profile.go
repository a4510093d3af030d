package engine

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// Verdict is what an analysis concluded about a sample.
type Verdict string

// The verdicts.
const (
	// VerdictClean: the analysis ran and found nothing.
	VerdictClean Verdict = "clean"
	// VerdictMalicious: the analysis ran and found a threat.
	VerdictMalicious Verdict = "malicious"
	// VerdictError: the analysis did not run to an answer (it failed,
	// timed out, or ended in a way no rule of the profile recognizes).
	VerdictError Verdict = "error"
)

// Profile defaults; docs/engine.md documents them.
const (
	DefaultTimeout      = 5 * time.Minute
	DefaultReadyTimeout = 5 * time.Minute
	DefaultCopyTimeout  = 5 * time.Minute
)

// ProfileConfig is one [profiles.NAME] table of config.toml: an analysis
// and the VMs that can run it. The VMs of a profile are interchangeable: a
// sample analysed with the profile runs on whichever of them is free
// first. A multi-engine scan is several profiles.
type ProfileConfig struct {
	// VMs are the VMs that run this analysis. Required.
	VMs []string `toml:"vms"`
	// SamplePath is where the sample goes in the guest, with {name} (the
	// sample's file name, made safe) and {sha256} substituted. Required.
	SamplePath string `toml:"sample_path"`
	// Command is the analysis: the program, then its arguments, with
	// {sample} (the guest path of the sample), {name} and {sha256}
	// substituted. Required.
	Command []string `toml:"command"`
	// Timeout bounds the command; it is killed then. Default 5m.
	Timeout *time.Duration `toml:"timeout"`
	// ReadyCommand is run until it exits 0 to learn that the guest is
	// ready after a start. Without it the guest is ready when it accepts
	// the sample.
	ReadyCommand []string `toml:"ready_command"`
	// ReadyTimeout bounds the wait for a ready guest. Default 5m.
	ReadyTimeout *time.Duration `toml:"ready_timeout"`
	// CopyTimeout bounds each copy into or out of the guest. Default 5m.
	CopyTimeout *time.Duration `toml:"copy_timeout"`
	// Artifacts are guest files brought back after the command, each to
	// the task's output directory under its (made safe) file name.
	Artifacts []string `toml:"artifacts"`
	// Verdict turns the command's exit code and output into a verdict.
	Verdict VerdictConfig `toml:"verdict"`
}

// VerdictConfig is a profile's [profiles.NAME.verdict] table. A threat is
// recognized first: a malicious exit code or output; then a clean one; and
// anything else is an error, because a scanner that answers in a way
// nobody described has not said the sample is clean.
type VerdictConfig struct {
	// MaliciousExitCodes are exit codes that mean a threat was found,
	// e.g. [1] for clamscan, [2] for MpCmdRun.exe -Scan.
	MaliciousExitCodes []int `toml:"malicious_exit_codes"`
	// MaliciousPattern is a regular expression (RE2) that, found in the
	// output (stdout, then stderr), means a threat whatever the exit code.
	MaliciousPattern string `toml:"malicious_pattern"`
	// CleanExitCodes are exit codes that mean nothing was found.
	// Default [0].
	CleanExitCodes []int `toml:"clean_exit_codes"`
	// CleanPattern, when set, must also be found in the output for a
	// clean verdict.
	CleanPattern string `toml:"clean_pattern"`
}

// Profile is a validated, resolved [profiles.NAME] table.
type Profile struct {
	// Name is the profile's name, the key of its table.
	Name string
	// VMs are the names of the VMs that run it.
	VMs []string
	// SamplePath, Command and ReadyCommand are the templates of the
	// table, placeholders unsubstituted.
	SamplePath   string
	Command      []string
	ReadyCommand []string
	// Timeout, ReadyTimeout and CopyTimeout are resolved to their defaults.
	Timeout      time.Duration
	ReadyTimeout time.Duration
	CopyTimeout  time.Duration
	// Artifacts are the guest paths brought back.
	Artifacts []string
	// Rules decide the verdict.
	Rules Rules
}

// Rules is a compiled VerdictConfig.
type Rules struct {
	MaliciousExitCodes []int
	Malicious          *regexp.Regexp
	CleanExitCodes     []int
	Clean              *regexp.Regexp
}

// Judge returns the verdict for a command that ran to completion, and
// which rule decided it, for the report.
func (r Rules) Judge(exitCode int, stdout, stderr []byte) (Verdict, string) {
	if r.Malicious != nil {
		for _, out := range [][]byte{stdout, stderr} {
			if r.Malicious.Match(out) {
				return VerdictMalicious, "output matches malicious_pattern"
			}
		}
	}
	if slices.Contains(r.MaliciousExitCodes, exitCode) {
		return VerdictMalicious, fmt.Sprintf("exit code %d is in malicious_exit_codes", exitCode)
	}
	if slices.Contains(r.CleanExitCodes, exitCode) {
		if r.Clean == nil || r.Clean.Match(stdout) || r.Clean.Match(stderr) {
			return VerdictClean, fmt.Sprintf("exit code %d is in clean_exit_codes", exitCode)
		}
		return VerdictError, fmt.Sprintf("exit code %d is clean but the output lacks clean_pattern", exitCode)
	}
	return VerdictError, fmt.Sprintf("exit code %d is neither in malicious_exit_codes nor in clean_exit_codes", exitCode)
}

// placeholders are what a profile's templates may contain.
var placeholders = map[string][]string{
	"sample_path":   {"name", "sha256"},
	"command":       {"sample", "name", "sha256"},
	"ready_command": {},
}

var placeholderRe = regexp.MustCompile(`\{[^{}]*\}`)

// Resolve validates the table and resolves its defaults. On a mistake it
// returns the key (relative to the table, e.g. "verdict.malicious_pattern")
// and what is wrong, for a file:line:key error.
func (c ProfileConfig) Resolve(name string) (Profile, string, error) {
	if !validName(name) {
		return Profile{}, "", fmt.Errorf("a profile name may hold only letters, digits, '-' and '_' (it names a directory of every report)")
	}
	p := Profile{
		Name: name, VMs: c.VMs, SamplePath: c.SamplePath, Command: c.Command, ReadyCommand: c.ReadyCommand,
		Timeout: DefaultTimeout, ReadyTimeout: DefaultReadyTimeout, CopyTimeout: DefaultCopyTimeout,
		Artifacts: c.Artifacts,
	}
	if len(c.VMs) == 0 {
		return p, "vms", fmt.Errorf("missing: name the VMs that run this analysis, e.g. vms = [\"win10-64-defender\"]")
	}
	seen := map[string]bool{}
	for _, vm := range c.VMs {
		if vm == "" {
			return p, "vms", fmt.Errorf("a VM name must not be empty")
		}
		if seen[vm] {
			return p, "vms", fmt.Errorf("%q is listed twice", vm)
		}
		seen[vm] = true
	}
	if c.SamplePath == "" {
		return p, "sample_path", fmt.Errorf(`missing: say where the sample goes in the guest, e.g. sample_path = 'C:\sandbox\{name}' or "/tmp/{sha256}"`)
	}
	if len(c.Command) == 0 || c.Command[0] == "" {
		return p, "command", fmt.Errorf(`missing: give the analysis command as a list, e.g. command = ["clamscan", "{sample}"]`)
	}
	if c.ReadyCommand != nil && (len(c.ReadyCommand) == 0 || c.ReadyCommand[0] == "") {
		return p, "ready_command", fmt.Errorf("empty: give a command that exits 0 once the guest is ready, or leave the key out")
	}
	for key, vals := range map[string][]string{"sample_path": {c.SamplePath}, "command": c.Command, "ready_command": c.ReadyCommand} {
		for _, v := range vals {
			for _, ph := range placeholderRe.FindAllString(v, -1) {
				if !slices.Contains(placeholders[key], ph[1:len(ph)-1]) {
					return p, key, fmt.Errorf("unknown placeholder %s in %q; %s", ph, v, knownPlaceholders(key))
				}
			}
		}
	}
	for _, d := range []struct {
		key string
		v   *time.Duration
		dst *time.Duration
	}{{"timeout", c.Timeout, &p.Timeout}, {"ready_timeout", c.ReadyTimeout, &p.ReadyTimeout}, {"copy_timeout", c.CopyTimeout, &p.CopyTimeout}} {
		if d.v == nil {
			continue
		}
		if *d.v <= 0 {
			return p, d.key, fmt.Errorf("must be a positive duration such as \"5m\"")
		}
		*d.dst = *d.v
	}
	for _, a := range c.Artifacts {
		if a == "" || artifactBase(a) == "" {
			return p, "artifacts", fmt.Errorf("%q is not a guest file path", a)
		}
	}
	rules, key, err := c.Verdict.compile()
	if err != nil {
		if key != "" {
			key = "." + key
		}
		return p, "verdict" + key, err
	}
	p.Rules = rules
	return p, "", nil
}

func knownPlaceholders(key string) string {
	if len(placeholders[key]) == 0 {
		return key + " takes no placeholder"
	}
	names := make([]string, len(placeholders[key]))
	for i, n := range placeholders[key] {
		names[i] = "{" + n + "}"
	}
	return key + " knows " + strings.Join(names, ", ")
}

func (v VerdictConfig) compile() (Rules, string, error) {
	r := Rules{MaliciousExitCodes: v.MaliciousExitCodes, CleanExitCodes: v.CleanExitCodes}
	if r.CleanExitCodes == nil {
		r.CleanExitCodes = []int{0}
	}
	if len(v.MaliciousExitCodes) == 0 && v.MaliciousPattern == "" {
		return r, "", fmt.Errorf("say what a threat looks like: malicious_exit_codes (e.g. [1] for clamscan, " +
			"[2] for MpCmdRun.exe -Scan) or malicious_pattern")
	}
	for _, c := range v.MaliciousExitCodes {
		if slices.Contains(r.CleanExitCodes, c) {
			return r, "malicious_exit_codes", fmt.Errorf("exit code %d is also in clean_exit_codes", c)
		}
	}
	var err error
	if v.MaliciousPattern != "" {
		if r.Malicious, err = regexp.Compile(v.MaliciousPattern); err != nil {
			return r, "malicious_pattern", fmt.Errorf("not a regular expression: %v", err)
		}
	}
	if v.CleanPattern != "" {
		if r.Clean, err = regexp.Compile(v.CleanPattern); err != nil {
			return r, "clean_pattern", fmt.Errorf("not a regular expression: %v", err)
		}
	}
	return r, "", nil
}

// validName reports whether s can name a profile: it becomes a directory
// name on every host OS.
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// expand substitutes placeholders in a template.
func expand(tmpl string, vars map[string]string) string {
	return placeholderRe.ReplaceAllStringFunc(tmpl, func(ph string) string {
		if v, ok := vars[ph[1:len(ph)-1]]; ok {
			return v
		}
		return ph
	})
}

// Settings is the [engine] table of config.toml.
type Settings struct {
	// MaxStarting caps the VMs starting at once (from start until the guest
	// is ready): start storms slow every VM of a host. Default 2.
	MaxStarting int `toml:"max_starting"`
	// OutDir is where reports go unless the command says otherwise.
	// Default "results", relative to the configuration file.
	OutDir string `toml:"out_dir"`
}

// DefaultMaxStarting is Settings.MaxStarting's default.
const DefaultMaxStarting = 2

// Validate returns the key of the first bad setting and what is wrong.
func (s Settings) Validate() (string, error) {
	if s.MaxStarting < 0 {
		return "max_starting", fmt.Errorf("must not be negative (0 means the default, %d)", DefaultMaxStarting)
	}
	return "", nil
}

// Bound is the longest a task of this profile can take on a VM with the
// given lifecycle settings, every step run to its deadline: what a queue
// waits before it may think the task's host dead.
func (p Profile) Bound(s lifecycle.Settings) time.Duration {
	stop := s.ReleaseTimeout + s.UnlockTimeout + s.SettleDelay
	for _, m := range s.StopLadder {
		stop += s.RungTimeout(m)
	}
	copies := time.Duration(1+len(p.Artifacts)) * p.CopyTimeout
	return s.CleanupTimeout + // preparing
		stop + s.RestoreTimeout + // restoring
		s.StartTimeout + p.ReadyTimeout + copies + p.Timeout + execGrace(p.Timeout) +
		s.CleanupTimeout // cleaning
}
