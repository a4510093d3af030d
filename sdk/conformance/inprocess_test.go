package conformance_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/conformance"
)

// rooted is a factory whose driver needs one setting, root, and remembers
// the path it resolved it to.
func rooted(resolved *string) sdk.Factory {
	return func(cfg sdk.Config, _ hclog.Logger) (hypervisor.Driver, error) {
		var c struct {
			Root string `toml:"root"`
		}
		if err := cfg.Decode(&c); err != nil {
			return nil, err
		}
		if c.Root == "" {
			return nil, cfg.Errorf([]string{"root"}, "missing: the directory of the VMs")
		}
		*resolved = cfg.Path(c.Root)
		return &lamp{}, nil
	}
}

func TestInProcessSaysWhatItsConfigStringLacks(t *testing.T) {
	for _, tc := range []struct{ name, config, want string }{
		{"another plugin's table", "[plugins.other.config]\nroot = \"vms\"\n",
			`conformance.InProcess("lamp"): the config string has no [plugins.lamp.config] table, which holds the driver's settings; ` +
				`it has [plugins.other.config]. It is a config.toml's text: put the driver's settings under a [plugins.lamp.config] header`},
		{"the table's keys without its header", "root = \"vms\"\n[vms.a]\nplugin = \"lamp\"\n",
			`no [plugins.lamp.config] table, which holds the driver's settings; it has keys outside any table (root), [vms].`},
		{"the plugin's table but not its config", "[plugins.lamp]\npath = \"bin/lamp\"\n",
			`it has [plugins.lamp] with no config table.`},
		{"not TOML", "[plugins.lamp.config]\nroot = \n",
			`conformance.InProcess("lamp"): the config string is not valid TOML: InProcess config:2: `},
		{"a key the driver does not know", "\n[plugins.lamp.config]\nroot = \"vms\"\nrooot = 1\n",
			`conformance.InProcess("lamp"): the driver rejected its configuration: InProcess config:4: plugins.lamp.config.rooot: unknown key`},
		{"a setting the driver refuses", "[plugins.lamp.config]\nroot = \"\"\n",
			`conformance.InProcess("lamp"): the driver rejected its configuration: InProcess config:2: plugins.lamp.config.root: missing: the directory of the VMs`},
		{"nothing at all", "", `the driver rejected its configuration: InProcess config: plugins.lamp.config.root: missing`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var root string
			_, _, err := conformance.InProcess("lamp", rooted(&root), tc.config)(context.Background())
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "config.toml:", "no file of that name exists")
		})
	}
}

func TestInProcessResolvesPathsAgainstTheWorkingDirectory(t *testing.T) {
	var root string
	d, closeFn, err := conformance.InProcess("lamp", rooted(&root), "[plugins.lamp.config]\nroot = \"vms\"\n")(context.Background())
	require.NoError(t, err)
	require.NotNil(t, d)
	closeFn()
	wd, err := os.Getwd()
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(wd, "vms"), root)
}
