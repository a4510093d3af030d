package fake_test

import (
	"flag"
	"os"
	"testing"

	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The package's slow tests are conformance runs and model explorations
// against the fake's simulated timings: they mostly wait, so four run at
// once rather than one per core.
func TestMain(m *testing.M) {
	flag.Parse()
	plugintest.WaitingParallel(4)
	os.Exit(m.Run())
}
