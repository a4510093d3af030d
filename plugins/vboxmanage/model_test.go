package vboxmanage_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/sdk/conformance"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The VirtualBox driver keeps the model of the contract (sdk/conformance,
// "The model"): random sequences of operations through the plugin binary,
// on the simulated installation the suite runs on, none deviating. The
// operations a minute are reported, not asserted: they are the
// simulator's and this machine's as much as the driver's.
func TestTheModelOnTheSimulator(t *testing.T) {
	t.Parallel()
	for _, p := range profiles {
		if p.name != fullProfile {
			continue
		}
		logs := &plugintest.Buffer{}
		target := suiteTarget(t, suiteWorld(t, p), logs)
		// Each step runs VBoxManage a few times, and the simulator's runs are
		// most of the inner loop's CPU: 30 s of exploration, 5 s under -short.
		span := 30 * time.Second
		if testing.Short() {
			span = 5 * time.Second
		}
		target.Model = conformance.Exploration{Duration: span}
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		rep, err := conformance.Collect(ctx, target, conformance.Options{Match: func(string) bool { return false }})
		require.NoError(t, err)
		require.NotNil(t, rep.Model)
		m := rep.Model
		t.Logf("VirtualBox %s: %s", p.version, m.Summary())
		if m.Deviation != nil {
			t.Errorf("the driver deviates from the model: %s\n%s", m.Deviation, strings.Join(m.Deviation.Log, "\n"))
		}
		assert.Empty(t, m.Error)
		assert.Positive(t, m.Sequences)
		assert.Empty(t, rep.Restore, "the VMs are put back")
		if t.Failed() {
			t.Logf("log of the host and the plugin:\n%s", logs)
		}
	}
}
