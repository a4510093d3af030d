package qemu_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The test guest's power button does what its kernel command line said
// when the snapshot was booted: the guest at ready powers off, the one at
// ready-ignore-acpi reads the press and runs on.
func TestPowerButtonHonouredOrIgnored(t *testing.T) {
	t.Parallel()
	r := newRig(t, guestVM("honours", "ready"), guestVM("ignores", "ready-ignore-acpi"))
	d := r.driver(t)
	ctx := plugintest.Context(t, 2*time.Minute)
	for _, vm := range []string{"honours", "ignores"} {
		require.NoError(t, d.Start(ctx, vm))
		require.NoError(t, d.Stop(ctx, vm, hypervisor.StopACPI))
	}
	st := waitFor(t, d, "honours", 30*time.Second, "off", func(st hypervisor.Status) bool { return st.Power.IsOff() })
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)

	console := r.vmFile("ignores", "console.log")
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, _ := os.ReadFile(console)
		if strings.Contains(string(data), "SANDBOX-POWER-BUTTON-IGNORED") {
			break
		}
		require.True(t, time.Now().Before(deadline), "the guest never logged the press; console: %q", data)
		time.Sleep(20 * time.Millisecond)
	}
	st, err := d.Status(ctx, "ignores")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerRunning, st.Power, "the guest read the press and ignored it: %+v", st)
	require.NoError(t, d.Stop(ctx, "ignores", hypervisor.StopPowerOff))
}
