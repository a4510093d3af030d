package engine_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/engine"
)

func validProfile() engine.ProfileConfig {
	return engine.ProfileConfig{
		VMs:        []string{"vm1"},
		SamplePath: "/tmp/{sha256}",
		Command:    []string{"clamscan", "--no-summary", "{sample}"},
		Verdict:    engine.VerdictConfig{MaliciousExitCodes: []int{1}},
	}
}

func TestProfileDefaults(t *testing.T) {
	p, key, err := validProfile().Resolve("clamav")
	require.NoError(t, err, key)
	assert.Equal(t, engine.DefaultTimeout, p.Timeout)
	assert.Equal(t, engine.DefaultReadyTimeout, p.ReadyTimeout)
	assert.Equal(t, engine.DefaultCopyTimeout, p.CopyTimeout)
	assert.Equal(t, []int{0}, p.Rules.CleanExitCodes, "exit 0 is clean unless told otherwise")
}

func TestProfileMistakesNameTheirKey(t *testing.T) {
	for _, tc := range []struct {
		name, profile string
		edit          func(*engine.ProfileConfig)
		key, msg      string
	}{
		{"a profile name becomes a directory", "../x", nil, "", "letters, digits"},
		{"no VMs", "p", func(c *engine.ProfileConfig) { c.VMs = nil }, "vms", "missing"},
		{"a VM twice", "p", func(c *engine.ProfileConfig) { c.VMs = []string{"a", "a"} }, "vms", `"a" is listed twice`},
		{"no sample path", "p", func(c *engine.ProfileConfig) { c.SamplePath = "" }, "sample_path", "where the sample goes"},
		{"no command", "p", func(c *engine.ProfileConfig) { c.Command = nil }, "command", "missing"},
		{"a placeholder misspelt", "p", func(c *engine.ProfileConfig) { c.Command = []string{"scan", "{smaple}"} },
			"command", "unknown placeholder {smaple}"},
		{"{sample} in the sample path", "p", func(c *engine.ProfileConfig) { c.SamplePath = "/tmp/{sample}" },
			"sample_path", "sample_path knows {name}, {sha256}"},
		{"an empty ready command", "p", func(c *engine.ProfileConfig) { c.ReadyCommand = []string{} }, "ready_command", "empty"},
		{"a zero timeout", "p", func(c *engine.ProfileConfig) { c.Timeout = ptr(time.Duration(0)) }, "timeout", "positive"},
		{"an artifact that is a directory", "p", func(c *engine.ProfileConfig) { c.Artifacts = []string{`C:\`} }, "artifacts", "not a guest file"},
		{"no way to see a threat", "p", func(c *engine.ProfileConfig) { c.Verdict = engine.VerdictConfig{} },
			"verdict", "malicious_exit_codes"},
		{"an exit code both clean and malicious", "p", func(c *engine.ProfileConfig) { c.Verdict.MaliciousExitCodes = []int{0} },
			"verdict.malicious_exit_codes", "also in clean_exit_codes"},
		{"a bad pattern", "p", func(c *engine.ProfileConfig) { c.Verdict.MaliciousPattern = "FOUND(" },
			"verdict.malicious_pattern", "not a regular expression"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validProfile()
			if tc.edit != nil {
				tc.edit(&c)
			}
			_, key, err := c.Resolve(tc.profile)
			require.Error(t, err)
			assert.Equal(t, tc.key, key)
			assert.Contains(t, err.Error(), tc.msg)
		})
	}
}

func TestVerdictRules(t *testing.T) {
	defender := engine.VerdictConfig{MaliciousExitCodes: []int{2}}
	clamav := engine.VerdictConfig{MaliciousExitCodes: []int{1}, MaliciousPattern: `(?m): .+ FOUND$`}
	strict := engine.VerdictConfig{MaliciousPattern: "Threat", CleanPattern: "Scan finished"}
	for _, tc := range []struct {
		name   string
		rules  engine.VerdictConfig
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
			c := validProfile()
			c.Verdict = tc.rules
			p, key, err := c.Resolve("p")
			require.NoError(t, err, key)
			got, why := p.Rules.Judge(tc.code, []byte(tc.stdout), nil)
			assert.Equal(t, tc.want, got, why)
			assert.NotEmpty(t, why)
		})
	}
}
