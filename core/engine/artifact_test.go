package engine_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

func TestSafeName(t *testing.T) {
	for in, want := range map[string]string{
		"report.txt":                      "report.txt",
		"..":                              "_",
		"...":                             "_",
		".hidden":                         "_.hidden",
		"CON":                             "_CON",
		"nul.txt":                         "_nul.txt",
		"a b/c\\d:e":                      "a_b_c_d_e",
		"trailing.":                       "trailing",
		"\x00\x1b[31m":                    "___31m",
		"résumé.pdf":                      "r_sum_.pdf",
		strings.Repeat("x", 300) + ".log": strings.Repeat("x", 96) + ".log",
	} {
		assert.Equal(t, want, engine.SafeName(in), "%q", in)
	}
}

// hostileDriver wraps a driver and, on copy-out, does what a hostile or
// broken driver might: leaves a link instead of a file.
type hostileDriver struct {
	hypervisor.Driver
	link string
}

func (h hostileDriver) CopyOut(ctx context.Context, vm, guestPath, hostPath string) error {
	if strings.HasSuffix(guestPath, "link.txt") {
		return os.Symlink(h.link, hostPath)
	}
	return h.Driver.CopyOut(ctx, vm, guestPath, hostPath)
}

func TestArtifactsNeverLeaveTheSampleDirectory(t *testing.T) {
	r := newRig(t, vmTable("vm1"))
	outside := filepath.Join(t.TempDir(), "outside.txt")
	require.NoError(t, os.WriteFile(outside, []byte("keep me"), 0o644))
	prof := scanProfile(t, "scan", []string{"vm1"}, func(c *config.Profile) {
		// The scanner writes its log under several names; the profile
		// asks for them under names that try to escape or collide.
		c.Command = []string{"scan", "-o", `C:\logs\Report.txt`, "{sample}"}
		c.Artifacts = []string{`C:\logs\Report.txt`, `C:\logs\..\logs\Report.txt`, `C:\sandbox\report.TXT`}
	})
	s := sample(t, "report.TXT", []byte("harmless"))
	// Plant a link where an artifact will land, pointing outside.
	dir := filepath.Join(r.out, s.SHA256, "scan", "artifacts")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "Report.txt")))

	sum := r.run(plugintest.Context(t, time.Minute), 0, []engine.Sample{s},
		with{prof, []lifecycle.VM{r.vm("vm1")}})
	res := sum.Reports[0].Results[0]
	require.Equal(t, engine.StepDone, res.State, res.Error)
	var paths []string
	for _, a := range res.Artifacts {
		require.Empty(t, a.Error)
		paths = append(paths, a.Path)
		fi, err := os.Lstat(filepath.Join(r.out, s.SHA256, a.Path))
		require.NoError(t, err)
		assert.True(t, fi.Mode().IsRegular(), "%s is a regular file", a.Path)
	}
	assert.Equal(t, []string{"scan/artifacts/Report.txt", "scan/artifacts/Report-2.txt", "scan/artifacts/report-3.TXT"}, paths,
		"names that differ only by case are told apart")
	data, err := os.ReadFile(outside)
	require.NoError(t, err)
	assert.Equal(t, "keep me", string(data), "the planted link was replaced, not followed")
}

func TestAnArtifactThatIsNotAFileIsRefused(t *testing.T) {
	r := newRig(t, vmTable("vm1"))
	outside := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(outside, []byte("secret"), 0o600))
	prof := scanProfile(t, "scan", []string{"vm1"}, func(c *config.Profile) {
		c.Artifacts = []string{"/logs/link.txt"}
	})
	vm := r.vm("vm1")
	vm.Driver = hostileDriver{Driver: r.driver, link: outside}
	sum := r.run(plugintest.Context(t, time.Minute), 0, []engine.Sample{sample(t, "s.txt", []byte("x"))},
		with{prof, []lifecycle.VM{vm}})
	res := sum.Reports[0].Results[0]
	assert.Equal(t, engine.StepCollecting, res.FailedStep)
	require.Len(t, res.Artifacts, 1)
	assert.Contains(t, res.Artifacts[0].Error, "not a regular file")
	assert.Empty(t, res.Artifacts[0].Path)
	entries, err := os.ReadDir(filepath.Join(r.out, sum.Reports[0].Sample.SHA256))
	require.NoError(t, err)
	for _, e := range entries {
		assert.False(t, strings.HasPrefix(e.Name(), ".staging"), "the staging directory is removed")
	}
	r.requireClean("vm1")
}
