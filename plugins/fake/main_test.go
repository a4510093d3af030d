package fake_test

import (
	"flag"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The package's slow tests are conformance runs and model explorations
// against the fake's simulated timings: they mostly wait, so four run at
// once rather than one per core.
func TestMain(m *testing.M) {
	flag.Parse()
	plugintest.WaitingParallel(4)
	code := m.Run()
	_ = programs.Close()
	os.Exit(code)
}

// programs holds the plugin binary, built once for the package's tests.
var programs plugintest.Cache

// fakeBinary is the fake's plugin binary.
func fakeBinary(t testing.TB) string {
	t.Helper()
	p, err := programs.Path("github.com/sandboxhq/sandbox/plugins/fake/cmd/sandbox-plugin-fake")
	require.NoError(t, err)
	return p
}
