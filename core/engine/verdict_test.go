package engine_test

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
)

func TestVerdictRules(t *testing.T) {
	defender := config.Verdict{MaliciousExitCodes: []int{2}, CleanExitCodes: []int{0}}
	clamav := config.Verdict{MaliciousExitCodes: []int{1}, Malicious: regexp.MustCompile(`(?m): .+ FOUND$`), CleanExitCodes: []int{0}}
	strict := config.Verdict{Malicious: regexp.MustCompile("Threat"), CleanExitCodes: []int{0}, Clean: regexp.MustCompile("Scan finished")}
	for _, tc := range []struct {
		name   string
		rules  config.Verdict
		code   int
		stdout string
		want   engine.Verdict
	}{
		{"Defender: 0 is clean", defender, 0, "", engine.VerdictClean},
		{"Defender: 2 is a threat", defender, 2, "", engine.VerdictMalicious},
		{"Defender: anything else is an error, not clean", defender, 1, "", engine.VerdictError},
		{"clamscan: 1 is a threat", clamav, 1, "", engine.VerdictMalicious},
		{"clamscan: 2 is an error", clamav, 2, "", engine.VerdictError},
		{"a threat in the output wins over a clean exit code", clamav, 0, "/tmp/x: Eicar-Signature FOUND\n", engine.VerdictMalicious},
		{"clean needs the clean pattern when one is set", strict, 0, "aborted", engine.VerdictError},
		{"clean with the clean pattern", strict, 0, "Scan finished.", engine.VerdictClean},
		{"a threat by pattern alone", strict, 0, "Threat found", engine.VerdictMalicious},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := engine.Judge(tc.rules, tc.code, []byte(tc.stdout), nil)
			assert.Equal(t, tc.want, got, why)
			assert.NotEmpty(t, why)
		})
	}
}
