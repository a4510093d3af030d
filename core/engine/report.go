package engine

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// ReportSchema names the report.json format. It changes when a field
// changes meaning or goes away; new fields may appear without a change.
const ReportSchema = "sandbox.report/v1"

// ReportFile is the name of a sample's report in its directory.
const ReportFile = "report.json"

// Sample is a file to analyse.
type Sample struct {
	// Path is the host file, made absolute.
	Path string `json:"path"`
	// Name is its file name.
	Name string `json:"name"`
	// Size is its length in bytes.
	Size int64 `json:"size"`
	// SHA256 is its hex digest; the sample's directory is named after it.
	SHA256 string `json:"sha256"`
}

// OpenSample reads the file at path once to learn its size and digest.
func OpenSample(path string) (Sample, error) {
	// The driver reads the sample from another process, maybe in another
	// working directory.
	path, err := filepath.Abs(path)
	if err != nil {
		return Sample{}, fmt.Errorf("sample %s: %w", path, err)
	}
	// Checked before opening: opening a FIFO (or a device) would block
	// until someone writes to it, or read forever.
	if fi, err := os.Stat(path); err != nil {
		return Sample{}, fmt.Errorf("sample %s: %w", path, err)
	} else if !fi.Mode().IsRegular() {
		return Sample{}, fmt.Errorf("sample %s: not a regular file (%s); give the file itself", path, fi.Mode().Type())
	}
	f, err := os.Open(path)
	if err != nil {
		return Sample{}, fmt.Errorf("sample %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Sample{}, fmt.Errorf("sample %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return Sample{}, fmt.Errorf("sample %s: not a regular file", path)
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return Sample{}, fmt.Errorf("sample %s: %w", path, err)
	}
	return Sample{Path: path, Name: filepath.Base(path), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// Report is one sample's report.json: the sample and one result per
// profile it was analysed with.
type Report struct {
	// Schema is ReportSchema.
	Schema string `json:"schema"`
	// Sample is what was analysed.
	Sample Sample `json:"sample"`
	// Verdict sums the results up: malicious if any result is, else error
	// if any result is not clean, else clean.
	Verdict Verdict `json:"verdict"`
	// Started and Finished bound the sample's tasks.
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Results has one entry per profile, in the order the profiles were
	// given.
	Results []*Result `json:"results"`
}

// Result is one (sample, profile) task: where it ran, what each step did
// and what came of it.
type Result struct {
	// Profile names the analysis.
	Profile string `json:"profile"`
	// VM and Plugin say where it ran; empty if it never got a VM.
	VM     string `json:"vm,omitempty"`
	Plugin string `json:"plugin,omitempty"`
	// State is the task's last step: done, failed or cancelled.
	State Step `json:"state"`
	// Verdict is the profile's rules applied to the command's result;
	// error when the command did not run to completion. A failure after
	// the command (collecting, cleaning) keeps the verdict; a cancelled
	// task has none.
	Verdict Verdict `json:"verdict,omitempty"`
	// Rule says which rule decided the verdict.
	Rule string `json:"rule,omitempty"`
	// FailedStep is the first step that failed, and Error why.
	FailedStep Step   `json:"failed_step,omitempty"`
	Error      string `json:"error,omitempty"`
	// ExitCode, Stdout and Stderr are the analysis command's, once it ran
	// to completion. The output is as the driver returned it (a driver may
	// bound it); bytes that are not UTF-8 show as U+FFFD.
	ExitCode *int   `json:"exit_code,omitempty"`
	Stdout   string `json:"stdout,omitempty"`
	Stderr   string `json:"stderr,omitempty"`
	// StdoutTruncated and StderrTruncated say that the command wrote more
	// than the profile's max_output, and only its start was kept.
	StdoutTruncated bool `json:"stdout_truncated,omitempty"`
	StderrTruncated bool `json:"stderr_truncated,omitempty"`
	// Artifacts are the declared guest files, brought back or not.
	Artifacts []Artifact `json:"artifacts,omitempty"`
	// Transitions is every step the task went through, with its time.
	Transitions []Transition `json:"transitions"`
	// Prepare, Restore, Start and Cleanup are the lifecycle's reports of
	// the VM operations: ensure-stopped, restore, start and the complete
	// cleanup after the task.
	Prepare *lifecycle.OpReport `json:"prepare,omitempty"`
	Restore *lifecycle.OpReport `json:"restore,omitempty"`
	Start   *lifecycle.OpReport `json:"start,omitempty"`
	Cleanup *lifecycle.OpReport `json:"cleanup,omitempty"`
	// Quarantined is set when the task's VM was quarantined, with why.
	Quarantined string `json:"quarantined,omitempty"`
	// Skipped lists VMs of the profile that were found unusable for this
	// task (quarantined, or failing to get ready) before it ran elsewhere.
	Skipped []SkippedVM `json:"skipped_vms,omitempty"`
}

// Transition is one step of a task and when it began.
type Transition struct {
	Step   Step      `json:"step"`
	At     time.Time `json:"at"`
	Detail string    `json:"detail,omitempty"`
}

// SkippedVM is a VM a task did not run on, and why.
type SkippedVM struct {
	VM     string `json:"vm"`
	Reason string `json:"reason"`
}

// Artifact is one declared guest file.
type Artifact struct {
	// GuestPath is the path declared in the profile.
	GuestPath string `json:"guest_path"`
	// Path is where it was put, relative to the sample's directory.
	Path string `json:"path,omitempty"`
	// Size and SHA256 describe what was brought back.
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	// Error says why it was not brought back.
	Error string `json:"error,omitempty"`
	// Dropped says that it was left in the guest, or deleted on arrival,
	// for the profile's caps on artifacts (Error says which).
	Dropped bool `json:"dropped,omitempty"`
}

// Overall sums results up into a sample's verdict: malicious if any result
// is, else error if any result is not clean, else clean.
func Overall(results []*Result) Verdict {
	v := VerdictClean
	for _, r := range results {
		switch {
		case r.Verdict == VerdictMalicious:
			return VerdictMalicious
		case r.Verdict != VerdictClean:
			v = VerdictError
		}
	}
	return v
}

// NewReport assembles a sample's report from the results of its tasks,
// one per profile in the order the profiles were asked for. It is the one
// place a Report is built, for `sandbox run` and the service alike.
func NewReport(s Sample, started, finished time.Time, results []*Result) *Report {
	return &Report{Schema: ReportSchema, Sample: s, Verdict: Overall(results),
		Started: started.UTC(), Finished: finished.UTC(), Results: results}
}

// NotRun is the result of a task that ended without running on any VM:
// cancelled before a VM was free, or failed because none could take it.
// It is the one place such a Result is built.
func NotRun(profile string, state Step, why string) *Result {
	now := time.Now().UTC()
	r := &Result{Profile: profile, State: state, Verdict: VerdictError, FailedStep: StepQueued, Error: why,
		Transitions: []Transition{{Step: state, At: now, Detail: why}}}
	if state == StepCancelled {
		r.Verdict = "" // a cancelled task has no verdict of its own
	}
	return r
}

// WriteReport saves r as report.json in dir, creating dir, and replacing an
// older report whole: a reader sees the old file or the new one, never a
// part. A failed write leaves no temporary file behind.
func WriteReport(dir string, r *Report) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+ReportFile+"-*")
	if err != nil {
		return err
	}
	_, err = f.Write(append(data, '\n'))
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, ReportFile))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", filepath.Join(dir, ReportFile), err)
	}
	return nil
}

// ReadReport reads a report.json.
func ReadReport(path string) (*Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if r.Schema != ReportSchema {
		return nil, fmt.Errorf("%s: schema %q, this sandbox reads %q", path, r.Schema, ReportSchema)
	}
	return &r, nil
}
