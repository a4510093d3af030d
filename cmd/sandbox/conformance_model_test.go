package main_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// modelJSON is the model's part of `sandbox --json conformance`.
type modelJSON struct {
	Summary map[string]int
	Model   *struct {
		Seed       uint64
		Sequences  int
		Operations int
		Deviation  *struct {
			Rules  []string
			What   string
			Script []string
			Seed   uint64
		}
		Error string
	}
}

// The model alone, explored against the reference fake: no check runs, the
// summary tells how many operations and sequences it ran, and nothing
// deviates.
func TestConformanceExploresTheModel(t *testing.T) {
	t.Parallel()
	r := sandbox(t, conformanceConfig(""), append(append([]string{"--json", "conformance", "--plugin", "fake"}, fastSuite...),
		"--lock-vm", "stale", "--run", "^$", "--explore", "3s", "--seed", "42")...)
	require.Equal(t, 0, r.code, r.stderr)
	var out modelJSON
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &out), r.stdout)
	require.NotNil(t, out.Model)
	assert.Zero(t, out.Summary["pass"]+out.Summary["fail"], "no check ran")
	assert.Equal(t, uint64(42), out.Model.Seed)
	assert.Positive(t, out.Model.Sequences)
	assert.Positive(t, out.Model.Operations)
	assert.Nil(t, out.Model.Deviation)
	assert.Empty(t, out.Model.Error)

	r = sandbox(t, conformanceConfig(""), append(append([]string{"conformance", "--plugin", "fake"}, fastSuite...),
		"--run", "^Info/", "--explore", "2s")...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `(?m)^model: \d+ operations in \d+ sequences in \S+ \(\d+ a minute\), seed \d+: no deviation$`, r.stdout)
}

// A driver that breaks the contract fails the exploration with exit
// status 1, the rule, and the script that shows it; the script, written to
// a file, replays the deviation, and on a driver that keeps the contract
// it shows none.
func TestConformanceModelDeviationReplays(t *testing.T) {
	t.Parallel()
	broken := conformanceConfig(`"lock-unknown"`)
	r := sandbox(t, broken, append(append([]string{"--json", "conformance", "--plugin", "fake"}, fastSuite...),
		"--run", "^$", "--explore", "30s")...)
	require.Equal(t, 1, r.code, r.stderr)
	var out modelJSON
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &out), r.stdout)
	require.NotNil(t, out.Model)
	require.NotNil(t, out.Model.Deviation, r.stdout)
	d := out.Model.Deviation
	assert.Equal(t, []string{"§3.3a"}, d.Rules)
	assert.NotZero(t, d.Seed)
	require.NotEmpty(t, d.Script)

	script := filepath.Join(t.TempDir(), "counterexample")
	require.NoError(t, os.WriteFile(script, []byte("# the model's counterexample\n"+strings.Join(d.Script, "\n")+"\n"), 0o644))
	r = sandbox(t, broken, append(append([]string{"conformance", "--plugin", "fake"}, fastSuite...), "--replay", script)...)
	assert.Equal(t, 1, r.code, r.stderr)
	assert.Contains(t, r.stdout, "deviation: §3.3a: with status.lock declared, the lock is neither locked nor unlocked")

	r = sandbox(t, conformanceConfig(""), append(append([]string{"conformance", "--plugin", "fake"}, fastSuite...), "--replay", script)...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "replayed: no deviation from the model")
}

func TestConformanceModelUsageErrors(t *testing.T) {
	t.Parallel()
	bad := filepath.Join(t.TempDir(), "bad")
	require.NoError(t, os.WriteFile(bad, []byte("start subject\nfly subject\n"), 0o644))
	for _, tc := range []struct {
		name string
		args []string
		msg  string
	}{
		{"a seed without exploring", []string{"--seed", "7"}, "--seed needs --explore"},
		{"a negative exploration", []string{"--explore", "-1s"}, "must not be negative"},
		{"replay and explore", []string{"--explore", "1s", "--replay", bad}, "does not go with --explore"},
		{"a script that does not parse", []string{"--replay", bad}, `line 2: step "fly subject": unknown operation "fly"`},
		{"no script", []string{"--replay", filepath.Join(t.TempDir(), "none")}, "--replay: open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := sandbox(t, conformanceConfig(""), append([]string{"conformance", "--plugin", "fake"}, tc.args...)...)
			assert.Equal(t, 2, r.code, r.stderr)
			assert.Contains(t, r.stderr, tc.msg)
		})
	}
}
