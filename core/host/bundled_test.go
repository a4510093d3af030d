package host

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The host tells sandbox's own plugins from a third party's by name; the
// list must be exactly what `make build` builds.
func TestBundledPluginsAreThoseOfThisTree(t *testing.T) {
	dirs, err := filepath.Glob("../../plugins/*/cmd/sandbox-plugin-*")
	require.NoError(t, err)
	var built []string
	for _, d := range dirs {
		built = append(built, filepath.Base(d))
	}
	assert.ElementsMatch(t, built, bundledPlugins)
	assert.True(t, bundled("/opt/sandbox/bin/sandbox-plugin-qemu"))
	assert.False(t, bundled("bin/sandbox-plugin-procvm"))
}
