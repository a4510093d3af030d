package qemu_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/sdk/conformance"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The QEMU driver keeps the model of the contract (sdk/conformance, "The
// model"): random sequences of operations through the plugin binary on
// real VMs of the test guest, for a bounded time, none deviating. The
// operations a minute are reported, not asserted: a real guest boots in
// seconds, and this machine's load decides how many.
func TestTheModelOnQEMU(t *testing.T) {
	if os.Getenv("SANDBOX_MODEL_MODES") == "" {
		t.Skip("90 s of random sequences on real VMs, which a busy machine's slow guest agent can make deviate: `make model` (SANDBOX_MODEL_MODES=1) runs it")
	}
	t.Parallel()
	logs := &plugintest.Buffer{}
	target := suiteTarget(t, suiteRig(t), logs)
	target.Model = conformance.Exploration{Duration: 90 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	rep, err := conformance.Collect(ctx, target, conformance.Options{Match: func(string) bool { return false }})
	require.NoError(t, err)
	require.NotNil(t, rep.Model)
	m := rep.Model
	t.Logf("driver %s %s on %s: %s", rep.Driver.Name, rep.Driver.Version, rep.Driver.Hypervisor, m.Summary())
	if m.Deviation != nil {
		t.Errorf("the driver deviates from the model: %s\n%s", m.Deviation, strings.Join(m.Deviation.Log, "\n"))
	}
	assert.Empty(t, m.Error)
	assert.Positive(t, m.Sequences)
	assert.Empty(t, rep.Restore, "the VMs are put back")
	if t.Failed() {
		t.Logf("log of the host and the plugin:\n%s", tail(logs.String(), 200))
	}
}
