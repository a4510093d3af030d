package libvirt_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const module = "github.com/sandboxhq/sandbox/"

// The driver is written as a third party would write one: its code (tests
// aside) imports of this module only the public SDK (sdk and its packages
// but sdk/internal) and the contract (core/hypervisor), besides its own
// packages.
func TestDriverImportsOnlyThePublicSDK(t *testing.T) {
	t.Parallel()
	allowed := func(path string) bool {
		rest, ours := strings.CutPrefix(path, module)
		switch {
		case !ours:
			return true
		case rest == "sdk" || rest == "core/hypervisor":
			return true
		case strings.HasPrefix(rest, "sdk/"):
			return !strings.HasPrefix(rest, "sdk/internal")
		}
		return rest == "plugins/libvirt" || strings.HasPrefix(rest, "plugins/libvirt/")
	}
	files := 0
	err := filepath.WalkDir(".", func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		files++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			assert.True(t, allowed(p), "%s imports %s: the driver may use only sdk, sdk/... (not internal) and core/hypervisor of this module", path, p)
		}
		return nil
	})
	require.NoError(t, err)
	assert.Greater(t, files, 8, "the walk saw the driver's files")
}
