package plugintest_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// A package is built once; Close removes what was built.
func TestCacheBuildsOnceAndCleansUp(t *testing.T) {
	var c plugintest.Cache
	const pkg = "github.com/sandboxhq/sandbox/plugins/fake/cmd/sandbox-plugin-fake"
	first, err := c.Path(pkg)
	require.NoError(t, err)
	fi, err := os.Stat(first)
	require.NoError(t, err)
	again, err := c.Path(pkg)
	require.NoError(t, err)
	assert.Equal(t, first, again)
	fi2, err := os.Stat(again)
	require.NoError(t, err)
	assert.Equal(t, fi.ModTime(), fi2.ModTime(), "not built again")
	_, err = c.Path("github.com/sandboxhq/sandbox/no/such/package")
	assert.Error(t, err)
	require.NoError(t, c.Close())
	_, err = os.Stat(filepath.Dir(first))
	assert.ErrorIs(t, err, os.ErrNotExist)
}
