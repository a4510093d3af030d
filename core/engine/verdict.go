package engine

import (
	"fmt"
	"slices"
	"time"

	"github.com/sandboxhq/sandbox/core/config"
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

// Judge returns the verdict for a command that ran to completion, and
// which rule of the profile's verdict table decided it, for the report.
func Judge(v config.Verdict, exitCode int, stdout, stderr []byte) (Verdict, string) {
	if v.Malicious != nil {
		for _, out := range [][]byte{stdout, stderr} {
			if v.Malicious.Match(out) {
				return VerdictMalicious, "output matches malicious_pattern"
			}
		}
	}
	if slices.Contains(v.MaliciousExitCodes, exitCode) {
		return VerdictMalicious, fmt.Sprintf("exit code %d is in malicious_exit_codes", exitCode)
	}
	if slices.Contains(v.CleanExitCodes, exitCode) {
		if v.Clean == nil || v.Clean.Match(stdout) || v.Clean.Match(stderr) {
			return VerdictClean, fmt.Sprintf("exit code %d is in clean_exit_codes", exitCode)
		}
		return VerdictError, fmt.Sprintf("exit code %d is clean but the output lacks clean_pattern", exitCode)
	}
	return VerdictError, fmt.Sprintf("exit code %d is neither in malicious_exit_codes nor in clean_exit_codes", exitCode)
}

// Bound is the longest a task of profile p can take on a VM with the given
// lifecycle settings, every step run to its deadline: what a queue waits
// before it may think the task's host dead.
func Bound(p config.Profile, s config.Lifecycle) time.Duration {
	copies := time.Duration(1+len(p.Artifacts)) * p.CopyTimeout
	return s.CleanupTimeout + // preparing
		s.StopBound() + s.RestoreTimeout + // restoring
		s.StartTimeout + p.ReadyTimeout + copies + p.Timeout + execGrace(p.Timeout) +
		s.CleanupTimeout // cleaning
}
