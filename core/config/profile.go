package config

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Profile is one [profiles.NAME] table, resolved: an analysis and the VMs
// that can run it. The VMs of a profile are interchangeable: a sample
// analysed with the profile runs on whichever of them is free first. A
// multi-engine scan is several profiles.
type Profile struct {
	// Name is the table's key; it names a directory of every report.
	Name string
	// VMs are the names of the VMs that run it.
	VMs []string
	// SamplePath, Command and ReadyCommand are templates (see Expand):
	// where the sample goes in the guest, the analysis, and the command
	// that exits 0 once the guest is ready (nil: the guest is ready when
	// it accepts the sample).
	SamplePath   string
	Command      []string
	ReadyCommand []string
	// Timeout bounds the command, ReadyTimeout the wait for a ready guest,
	// CopyTimeout each copy into or out of the guest.
	Timeout      time.Duration
	ReadyTimeout time.Duration
	CopyTimeout  time.Duration
	// Artifacts are the guest files brought back after the command.
	Artifacts []string
	// ArtifactsMaxCount and ArtifactsMaxSize bound what a task brings
	// back from its guest: past either, an artifact is dropped, and the
	// report says so.
	ArtifactsMaxCount int
	ArtifactsMaxSize  int64
	// MaxOutput bounds, in bytes, what is kept of each of the command's
	// stdout and stderr; the report says when either was cut.
	MaxOutput int64
	// Verdict turns the command's exit code and output into a verdict.
	Verdict Verdict
}

// Verdict is a profile's [profiles.NAME.verdict] table, compiled. A threat
// is recognized first: a malicious exit code or output; then a clean one;
// anything else is an error, because a scanner that answers in a way
// nobody described has not said the sample is clean.
type Verdict struct {
	// MaliciousExitCodes mean a threat was found, e.g. [1] for clamscan.
	MaliciousExitCodes []int
	// Malicious, found in the output, means a threat whatever the exit
	// code.
	Malicious *regexp.Regexp
	// CleanExitCodes mean nothing was found.
	CleanExitCodes []int
	// Clean, when set, must also be found in the output for a clean
	// verdict.
	Clean *regexp.Regexp
}

// Profile defaults; docs/engine.md documents them.
const (
	DefaultTimeout           = 5 * time.Minute
	DefaultReadyTimeout      = 5 * time.Minute
	DefaultCopyTimeout       = 5 * time.Minute
	DefaultArtifactsMaxCount = 32
	DefaultArtifactsMaxSize  = 256 << 20
	DefaultMaxOutput         = 1 << 20
)

// NewProfile is a profile with only its VMs, sample path and command set,
// every timeout at its default, and a verdict of exit 1 malicious, exit 0
// clean: what tests and examples start from.
func NewProfile(name string, vms []string, samplePath string, command ...string) Profile {
	return Profile{Name: name, VMs: vms, SamplePath: samplePath, Command: command,
		Timeout: DefaultTimeout, ReadyTimeout: DefaultReadyTimeout, CopyTimeout: DefaultCopyTimeout,
		ArtifactsMaxCount: DefaultArtifactsMaxCount, ArtifactsMaxSize: DefaultArtifactsMaxSize, MaxOutput: DefaultMaxOutput,
		Verdict: Verdict{MaliciousExitCodes: []int{1}, CleanExitCodes: []int{0}}}
}

// profileTable is the TOML form of Profile.
type profileTable struct {
	VMs          []string       `toml:"vms"`
	SamplePath   string         `toml:"sample_path"`
	Command      []string       `toml:"command"`
	Timeout      *time.Duration `toml:"timeout"`
	ReadyCommand []string       `toml:"ready_command"`
	ReadyTimeout *time.Duration `toml:"ready_timeout"`
	CopyTimeout  *time.Duration `toml:"copy_timeout"`
	Artifacts    []string       `toml:"artifacts"`
	// ArtifactsMaxCount, ArtifactsMaxSize and MaxOutput bound what comes
	// back from the guest; left out, the defaults.
	ArtifactsMaxCount *int         `toml:"artifacts_max_count"`
	ArtifactsMaxSize  *int64       `toml:"artifacts_max_size"`
	MaxOutput         *int64       `toml:"max_output"`
	Verdict           verdictTable `toml:"verdict"`
}

// verdictTable is the TOML form of Verdict.
type verdictTable struct {
	MaliciousExitCodes []int  `toml:"malicious_exit_codes"`
	MaliciousPattern   string `toml:"malicious_pattern"`
	CleanExitCodes     []int  `toml:"clean_exit_codes"`
	CleanPattern       string `toml:"clean_pattern"`
}

// placeholders are what each template may contain.
var placeholders = map[string][]string{
	"sample_path":   {"name", "sha256"},
	"command":       {"sample", "name", "sha256"},
	"ready_command": {},
}

var placeholderRe = regexp.MustCompile(`\{[^{}]*\}`)

// Expand substitutes a template's placeholders ({name}, {sha256},
// {sample}) with vars; one it has no value for stays as written.
func Expand(template string, vars map[string]string) string {
	return placeholderRe.ReplaceAllStringFunc(template, func(ph string) string {
		if v, ok := vars[ph[1:len(ph)-1]]; ok {
			return v
		}
		return ph
	})
}

// GuestBase is the last element of a guest path, Unix or Windows style;
// empty when the path names no file. Artifacts are named after it on the
// host.
func GuestBase(guestPath string) string {
	p := strings.ReplaceAll(guestPath, `\`, "/")
	if len(p) >= 2 && p[1] == ':' {
		p = p[2:]
	}
	b := path.Base(path.Clean("/" + p))
	if b == "/" || b == "." || b == ".." {
		return ""
	}
	return b
}

// resolve validates the table and fills in the defaults. On a mistake it
// returns the key (relative to the table, e.g. "verdict.malicious_pattern")
// and what is wrong, for a file:line:key error.
func (t profileTable) resolve(name string) (Profile, string, error) {
	if !validProfileName(name) {
		return Profile{}, "", fmt.Errorf("a profile name may hold only letters, digits, '-' and '_' (it names a directory of every report)")
	}
	p := NewProfile(name, t.VMs, t.SamplePath, t.Command...)
	p.ReadyCommand, p.Artifacts = t.ReadyCommand, t.Artifacts
	if len(t.VMs) == 0 {
		return p, "vms", fmt.Errorf("missing: name the VMs that run this analysis, e.g. vms = [\"win10-64-defender\"]")
	}
	seen := map[string]bool{}
	for _, vm := range t.VMs {
		if vm == "" {
			return p, "vms", fmt.Errorf("a VM name must not be empty")
		}
		if seen[vm] {
			return p, "vms", fmt.Errorf("%q is listed twice", vm)
		}
		seen[vm] = true
	}
	if t.SamplePath == "" {
		return p, "sample_path", fmt.Errorf(`missing: say where the sample goes in the guest, e.g. sample_path = 'C:\sandbox\{name}' or "/tmp/{sha256}"`)
	}
	if len(t.Command) == 0 || t.Command[0] == "" {
		return p, "command", fmt.Errorf(`missing: give the analysis command as a list, e.g. command = ["clamscan", "{sample}"]`)
	}
	if t.ReadyCommand != nil && (len(t.ReadyCommand) == 0 || t.ReadyCommand[0] == "") {
		return p, "ready_command", fmt.Errorf("empty: give a command that exits 0 once the guest is ready, or leave the key out")
	}
	for _, key := range []string{"sample_path", "command", "ready_command"} {
		vals := map[string][]string{"sample_path": {t.SamplePath}, "command": t.Command, "ready_command": t.ReadyCommand}[key]
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
	}{{"timeout", t.Timeout, &p.Timeout}, {"ready_timeout", t.ReadyTimeout, &p.ReadyTimeout}, {"copy_timeout", t.CopyTimeout, &p.CopyTimeout}} {
		if d.v == nil {
			continue
		}
		if *d.v <= 0 {
			return p, d.key, fmt.Errorf("must be a positive duration such as \"5m\"")
		}
		*d.dst = *d.v
	}
	for _, a := range t.Artifacts {
		if a == "" || GuestBase(a) == "" {
			return p, "artifacts", fmt.Errorf("%q is not a guest file path", a)
		}
	}
	if t.ArtifactsMaxCount != nil {
		if *t.ArtifactsMaxCount < 0 {
			return p, "artifacts_max_count", fmt.Errorf("must not be negative (0 brings no artifact back)")
		}
		p.ArtifactsMaxCount = *t.ArtifactsMaxCount
	}
	for _, b := range []struct {
		key string
		v   *int64
		dst *int64
	}{{"artifacts_max_size", t.ArtifactsMaxSize, &p.ArtifactsMaxSize}, {"max_output", t.MaxOutput, &p.MaxOutput}} {
		if b.v == nil {
			continue
		}
		if *b.v <= 0 {
			return p, b.key, fmt.Errorf("must be a positive number of bytes, such as %d for 1 MiB", 1<<20)
		}
		*b.dst = *b.v
	}
	v, key, err := t.Verdict.compile()
	if err != nil {
		if key != "" {
			key = "." + key
		}
		return p, "verdict" + key, err
	}
	p.Verdict = v
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

func (t verdictTable) compile() (Verdict, string, error) {
	v := Verdict{MaliciousExitCodes: t.MaliciousExitCodes, CleanExitCodes: t.CleanExitCodes}
	if v.CleanExitCodes == nil {
		v.CleanExitCodes = []int{0}
	}
	if len(t.MaliciousExitCodes) == 0 && t.MaliciousPattern == "" {
		return v, "", fmt.Errorf("say what a threat looks like: malicious_exit_codes (e.g. [1] for clamscan, " +
			"[2] for MpCmdRun.exe -Scan) or malicious_pattern")
	}
	for _, c := range t.MaliciousExitCodes {
		if slices.Contains(v.CleanExitCodes, c) {
			return v, "malicious_exit_codes", fmt.Errorf("exit code %d is also in clean_exit_codes", c)
		}
	}
	var err error
	if t.MaliciousPattern != "" {
		if v.Malicious, err = regexp.Compile(t.MaliciousPattern); err != nil {
			return v, "malicious_pattern", fmt.Errorf("not a regular expression: %v", err)
		}
	}
	if t.CleanPattern != "" {
		if v.Clean, err = regexp.Compile(t.CleanPattern); err != nil {
			return v, "clean_pattern", fmt.Errorf("not a regular expression: %v", err)
		}
	}
	return v, "", nil
}

// validProfileName reports whether s can name a profile: it becomes a
// directory name on every host OS.
func validProfileName(s string) bool {
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
