package libvirt

import (
	"errors"
	"strings"
	"testing"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
)

// Every state and reason libvirt 9.0 has maps onto the contract; what has
// no word there is unknown, never off, and off-like words come only with
// libvirt's shut off, which it says once the QEMU process is gone.
func TestStatesMapOntoTheContract(t *testing.T) {
	t.Parallel()
	cases := []struct {
		state  golibvirt.DomainState
		reason int32
		power  hypervisor.PowerState
		raw    string
	}{
		{golibvirt.DomainRunning, 1, hypervisor.PowerRunning, "running (booted)"},
		{golibvirt.DomainRunning, 4, hypervisor.PowerRunning, "running (from snapshot)"},
		{golibvirt.DomainBlocked, 0, hypervisor.PowerRunning, "idle (unknown)"},
		{golibvirt.DomainPaused, 1, hypervisor.PowerPaused, "paused (user)"},
		{golibvirt.DomainPaused, 2, hypervisor.PowerUnknown, "paused (migrating)"},
		{golibvirt.DomainPaused, 3, hypervisor.PowerSaving, "paused (saving)"},
		{golibvirt.DomainPaused, 5, hypervisor.PowerStuck, "paused (I/O error)"},
		{golibvirt.DomainPaused, 9, hypervisor.PowerSnapshotting, "paused (creating snapshot)"},
		{golibvirt.DomainPaused, 11, hypervisor.PowerStarting, "paused (starting up)"},
		{golibvirt.DomainShutdown, 1, hypervisor.PowerStopping, "in shutdown (user)"},
		{golibvirt.DomainShutoff, 1, hypervisor.PowerOff, "shut off (shutdown)"},
		{golibvirt.DomainShutoff, 2, hypervisor.PowerOff, "shut off (destroyed)"},
		{golibvirt.DomainShutoff, 3, hypervisor.PowerAborted, "shut off (crashed)"},
		{golibvirt.DomainShutoff, 5, hypervisor.PowerSaved, "shut off (saved)"},
		{golibvirt.DomainShutoff, 6, hypervisor.PowerOff, "shut off (failed)"},
		{golibvirt.DomainCrashed, 1, hypervisor.PowerStuck, "crashed (panicked)"},
		{golibvirt.DomainPmsuspended, 0, hypervisor.PowerUnknown, "pmsuspended (unknown)"},
		{golibvirt.DomainNostate, 0, hypervisor.PowerUnknown, "no state (unknown)"},
		// A newer libvirt's state or reason.
		{golibvirt.DomainState(9), 0, hypervisor.PowerUnknown, "state 9 (reason 0)"},
		{golibvirt.DomainPaused, 42, hypervisor.PowerPaused, "paused (reason 42)"},
	}
	for _, c := range cases {
		assert.Equal(t, c.power, powerOf(c.state, c.reason), "%s", c.raw)
		assert.Equal(t, c.raw, raw(c.state, c.reason))
		if c.power.IsOff() {
			assert.False(t, active(c.state), "%s: off-like only without a process", c.raw)
		}
	}
	for state := range stateWords {
		for reason := range reasonWords[state] {
			p := powerOf(state, int32(reason))
			assert.True(t, p.Valid(), "%s", raw(state, int32(reason)))
			assert.Equal(t, !active(state), p.IsOff() || p == hypervisor.PowerRestoring,
				"%s: off-like exactly when libvirt says shut off", raw(state, int32(reason)))
		}
	}
}

// libvirt's errors, with the texts seen on libvirt 9.0, land in the
// contract's classes with libvirt's words kept.
func TestLibvirtErrorsAreClassified(t *testing.T) {
	t.Parallel()
	cases := []struct {
		code golibvirt.ErrorNumber
		msg  string
		want hypervisor.Code
	}{
		{golibvirt.ErrNoDomain, "Domain not found: no domain with matching name 'x'", hypervisor.CodeNotFound},
		{golibvirt.ErrNoDomainSnapshot, "Domain snapshot not found: no domain snapshot with matching name 'nosuch'", hypervisor.CodeNotFound},
		{golibvirt.ErrOperationInvalid, "Requested operation is not valid: domain is already running", hypervisor.CodeInvalidState},
		{golibvirt.ErrOperationTimeout, "Timed out during operation: cannot acquire state change lock (held by monitor=remoteDispatchDomainSuspend)", hypervisor.CodeLocked},
		{golibvirt.ErrAgentUnresponsive, "Guest agent is not responding: QEMU guest agent is not connected", hypervisor.CodeInvalidState},
		{golibvirt.ErrInternalError, `internal error: qemu unexpectedly closed the monitor: qemu-system-x86_64: Failed to get "write" lock`, hypervisor.CodeLocked},
		{golibvirt.ErrInternalError, "internal error: process exited while connecting to monitor: Snapshot 'ready' does not exist in one or more devices", hypervisor.CodeFailed},
		{golibvirt.ErrOperationFailed, "operation failed: Failed to terminate process 4242 with SIGKILL: Device or resource busy", hypervisor.CodeFailed},
		{golibvirt.ErrRPC, "Cannot recv data: Connection reset by peer", hypervisor.CodeUnavailable},
	}
	for _, c := range cases {
		err := classify("op", "vm", golibvirt.Error{Code: uint32(c.code), Message: c.msg})
		assert.Equal(t, c.want, hypervisor.CodeOf(err), "%s", c.msg)
		var he *hypervisor.Error
		require.True(t, errors.As(err, &he))
		assert.Equal(t, c.msg, he.Message, "libvirt's words are kept")
		assert.Equal(t, c.code, libvirtCode(err))
	}
	assert.Equal(t, hypervisor.CodeFailed, hypervisor.CodeOf(classify("op", "vm", errors.New("something else"))))
}

// Every mistake in the plugin's table names its key and line.
func TestConfigMistakesNameTheKey(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"uri = \"qemu+ssh://host/system\"\n":                 "plugins.libvirt.config.uri: \"qemu+ssh://host/system\": the driver speaks to a local libvirtd",
		"uri = \"xen:///system\"\n":                          "plugins.libvirt.config.uri",
		"[timeouts]\nstop = \"-1s\"\n":                       "plugins.libvirt.config.timeouts.stop: must be a positive duration",
		"[guest]\nchunk_size = 1048576\n":                    "plugins.libvirt.config.guest.chunk_size: must be between 1 and 196608 bytes",
		"[guest]\nkill = []\n":                               "plugins.libvirt.config.guest.kill",
		"[vms.a]\ndomain = \"d\"\n[vms.b]\ndomain = \"d\"\n": "plugins.libvirt.config.vms.b.domain: domain \"d\" is already VM \"a\"",
		"[vms.a]\ndomian = \"d\"\n":                          "plugins.libvirt.config.vms.a.domian",
	}
	for body, want := range cases {
		text := "[plugins.libvirt.config]\n" + strings.ReplaceAll(body, "[", "[plugins.libvirt.config.")
		_, err := New(sdk.ConfigFromTOML("libvirt", "/etc/sandbox/config.toml", []byte(text)), hclog.NewNullLogger())
		require.Error(t, err, "%s", body)
		assert.Contains(t, err.Error(), want, "%s", body)
		assert.Contains(t, err.Error(), "config.toml:", "the error has the file and line")
	}
	d, err := New(sdk.ConfigFromTOML("libvirt", "/etc/sandbox/config.toml", []byte("[plugins.libvirt.config.vms.win10]\nsnapshot = \"clean\"\n")), hclog.NewNullLogger())
	require.NoError(t, err)
	v := d.(*Driver).cfg.vms["win10"]
	assert.Equal(t, "win10", v.Domain, "the domain defaults to the VM's name")
	assert.Equal(t, "/run/libvirt/libvirt-sock", d.(*Driver).cfg.Socket)
}

// What qemu-img lists of an image's internal snapshots is read by name.
func TestSnapshotTagsOfQemuImg(t *testing.T) {
	t.Parallel()
	list := `Snapshot list:
ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT
1         ready              89 MiB 2026-12-06 14:41:55 00:00:13.467
2         ready-ignore-acpi   89 MiB 2026-12-06 14:42:13 00:00:16.188
`
	assert.True(t, hasTag(list, "ready"))
	assert.True(t, hasTag(list, "ready-ignore-acpi"))
	assert.False(t, hasTag(list, "ID"))
	assert.False(t, hasTag(list, "clean"))
	assert.Equal(t, "ready, ready-ignore-acpi", tags(list))
	assert.Equal(t, "none", tags(""))
}

// The guest's output is cut to guest.max_output, whatever the agent sends.
func TestExecOutputIsBounded(t *testing.T) {
	t.Parallel()
	d := &Driver{cfg: &settings{Config: Defaults()}}
	d.cfg.Guest.MaxOutput = 10
	code := 3
	res, err := d.execResult("vm", execStatus{Exited: true, ExitCode: &code,
		OutData: "MDEyMzQ1Njc4OTAxMjM0NTY3ODk=", ErrData: "ZXJy"}, 10)
	require.NoError(t, err)
	assert.Equal(t, 3, res.ExitCode)
	assert.Equal(t, "0123456789", string(res.Stdout))
	assert.True(t, res.StdoutTruncated, "the result says stdout was cut")
	assert.Equal(t, "err", string(res.Stderr))
	assert.False(t, res.StderrTruncated)

	res, err = d.execResult("vm", execStatus{Exited: true, ExitCode: &code, OutData: "MDEyMzQ1Njc4OTAxMjM0NTY3ODk="}, 4)
	require.NoError(t, err)
	assert.Equal(t, "0123", string(res.Stdout), "a request's max_output asks for less")
	assert.True(t, res.StdoutTruncated)
}

// An agent channel libvirt gave up on comes with what to do, since
// waiting alone seldom brings it back; libvirt's other words on the agent
// come as they are.
func TestABrokenAgentChannelSaysWhatToDo(t *testing.T) {
	t.Parallel()
	broken := agentWord("Guest agent is not responding: QEMU guest agent is not available due to an error")
	assert.True(t, strings.HasPrefix(broken, "Guest agent is not responding: QEMU guest agent is not available due to an error ("), broken)
	assert.Contains(t, broken, "stop the VM and start it again")
	assert.Equal(t, "Guest agent is not responding: QEMU guest agent is not connected",
		agentWord("Guest agent is not responding: QEMU guest agent is not connected"))
}
