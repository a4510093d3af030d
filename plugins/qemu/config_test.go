package qemu_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/plugins/qemu"
	"github.com/sandboxhq/sandbox/sdk"
)

// A mistake in the driver's table names the file, the line and the key,
// and says what to do; the driver does not start.
func TestConfigMistakesNameTheirLine(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "sqc")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	long := filepath.Join(dir, strings.Repeat("d", 100))
	for _, tc := range []struct {
		name, table, want string
	}{
		{"no state_dir", "accel = \"tcg\"\n", `config.toml:1: plugins.qemu.config.state_dir: missing`},
		{"no disk", "state_dir = \"s\"\n[plugins.qemu.config.vms.a]\nsnapshot = \"ready\"\n",
			`config.toml:3: plugins.qemu.config.vms.a.disk: missing`},
		{"bad on_poweroff", "state_dir = \"s\"\n[plugins.qemu.config.vms.a]\ndisk = \"a.qcow2\"\non_poweroff = \"linger\"\n",
			`config.toml:5: plugins.qemu.config.vms.a.on_poweroff: "linger": use "exit" or "preserve"`},
		{"chunk too large", "state_dir = \"s\"\n[plugins.qemu.config.guest]\nchunk_size = 8388608\n",
			`config.toml:4: plugins.qemu.config.guest.chunk_size: must be between 1 and 4194304 bytes`},
		{"unknown key", "state_dir = \"s\"\nacel = \"kvm\"\n", `config.toml:3: plugins.qemu.config.acel: unknown key`},
		{"initrd without kernel", "state_dir = \"s\"\n[plugins.qemu.config.vms.a]\ndisk = \"a.qcow2\"\ninitrd = \"i\"\n",
			`plugins.qemu.config.vms.a.kernel: missing: initrd and append need a kernel`},
		{"socket path too long", "state_dir = \"" + long + "\"\n[plugins.qemu.config.vms.a]\ndisk = \"a.qcow2\"\n",
			`plugins.qemu.config.state_dir: VM a's socket`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := "[plugins.qemu.config]\n" + tc.table
			_, err := qemu.New(sdk.ConfigFromTOML("qemu", filepath.Join(dir, "config.toml"), []byte(text)), hclog.NewNullLogger())
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
