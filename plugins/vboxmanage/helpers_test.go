package vboxmanage_test

import (
	"errors"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage"
	"github.com/sandboxhq/sandbox/sdk"
)

func newFromTOML(file, text string) (hypervisor.Driver, error) {
	return vboxmanage.New(sdk.ConfigFromTOML("vbox", file, []byte(text)), hclog.NewNullLogger())
}

func newDriverAt(t *testing.T, path string) hypervisor.Driver {
	t.Helper()
	d, err := newFromTOML("config.toml", "[plugins.vbox.config]\npath = \""+path+"\"\n")
	require.NoError(t, err)
	return d
}

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// mustRunSim runs VBoxManage outside the driver, as another tool would.
func mustRunSim(t *testing.T, r *rig, args ...string) {
	t.Helper()
	_, stderr, code := r.sim.Run(args...)
	require.Equal(t, 0, code, "%v: %s", args, stderr)
}
