package qemu_test

import (
	"os"
	"path/filepath"
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

// The guest's scanner finds the EICAR test file, and only it, infected,
// and writes its verdict where it is told.
func TestGuestScanner(t *testing.T) {
	t.Parallel()
	r := newRig(t, guestVM("vm1", "ready"))
	d := r.driver(t)
	ctx := plugintest.Context(t, 2*time.Minute)
	require.NoError(t, d.Start(ctx, "vm1"))
	host := t.TempDir()
	eicarData, err := os.ReadFile(eicar(t, host))
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		data []byte
		exit int
	}{
		{"eicar", eicarData, 1},
		{"eicar-with-trailing-space", append(append([]byte{}, eicarData...), " \r\n"...), 1},
		{"eicar-after-other-bytes", append([]byte("prefix "), eicarData...), 0},
		{"text", []byte("an ordinary file\n"), 0},
	} {
		src := filepath.Join(host, tc.name)
		require.NoError(t, os.WriteFile(src, tc.data, 0o644))
		require.NoError(t, d.CopyIn(ctx, "vm1", src, "/tmp/"+tc.name))
		res, err := d.Exec(ctx, "vm1", hypervisor.ExecRequest{Path: "/bin/sandbox-scan", Args: []string{"/tmp/" + tc.name, "/tmp/result"}})
		require.NoError(t, err)
		assert.Equal(t, tc.exit, res.ExitCode, "%s: %s %s", tc.name, res.Stdout, res.Stderr)
		out := filepath.Join(host, tc.name+".result")
		require.NoError(t, d.CopyOut(ctx, "vm1", "/tmp/result", out))
		verdict, err := os.ReadFile(out)
		require.NoError(t, err)
		assert.Equal(t, string(res.Stdout), string(verdict), "the result file holds the verdict printed")
	}
	res, err := d.Exec(ctx, "vm1", hypervisor.ExecRequest{Path: "/bin/sandbox-scan", Args: []string{"/tmp/missing"}})
	require.NoError(t, err)
	assert.Equal(t, 2, res.ExitCode)
	assert.Contains(t, string(res.Stderr), "cannot read /tmp/missing")
}
