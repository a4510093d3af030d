package plugintest_test

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// A package is built once per Cache, and the test processes of one module
// share what was built: another Cache (as in another test process) finds
// the executable up to date and does not link it again, and Close leaves
// it for the next.
func TestCacheBuildsOnceAndSharesAcrossProcesses(t *testing.T) {
	var c plugintest.Cache
	const pkg = "github.com/sandboxhq/sandbox/plugins/fake/cmd/sandbox-plugin-fake"
	first, err := c.Path(pkg)
	require.NoError(t, err)
	fi, err := os.Stat(first)
	require.NoError(t, err)
	again, err := c.Path(pkg)
	require.NoError(t, err)
	assert.Equal(t, first, again)
	_, err = c.Path("github.com/sandboxhq/sandbox/no/such/package")
	assert.Error(t, err)
	require.NoError(t, c.Close())

	var other plugintest.Cache
	defer other.Close()
	shared, err := other.Path(pkg)
	require.NoError(t, err)
	if runtime.GOOS == "windows" {
		return // no file locks: each Cache builds its own
	}
	assert.Equal(t, first, shared, "one executable for the module's test processes")
	fi2, err := os.Stat(shared)
	require.NoError(t, err)
	// A new link would have been renamed into place: another file. (go
	// build touches an executable it finds up to date, so the time says
	// nothing.)
	assert.True(t, os.SameFile(fi, fi2), "linked again")

	// Another set of flags is another executable.
	other2, err := other.Path(pkg, "-tags=plugintest_other")
	require.NoError(t, err)
	assert.NotEqual(t, filepath.Dir(first), filepath.Dir(other2))
}
