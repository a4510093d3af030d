package config_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/configfile"
)

func TestTheShippedConfigLoads(t *testing.T) {
	cfg, err := config.Load(filepath.Join("..", "..", "config.toml"))
	require.NoError(t, err)
	assert.Equal(t, "bin/sandbox-plugin-fake", cfg.Plugins["fake"].Path)
	assert.Equal(t, "fake", cfg.VMs["win10-64-defender"].Plugin)
}

func TestBadConfigNamesFileLineAndKey(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		line       int
		key, msg   string
	}{
		{
			name: "unknown top-level table",
			text: "[plugins.fake]\npath = \"x\"\n\n[plugin.typo]\npath = \"y\"\n",
			line: 4, key: "plugin.typo", msg: "unknown key",
		},
		{
			name: "unknown plugin key",
			text: "[plugins.fake]\npath = \"x\"\nchecksum = \"abc\"\n",
			line: 3, key: "plugins.fake.checksum", msg: "unknown key",
		},
		{
			name: "wrong type",
			text: "[plugins.fake]\npath = \"x\"\nargs = \"--max-protocol=1\"\n",
			line: 3, key: "plugins.fake.args", msg: "incompatible types",
		},
		{
			name: "wrong duration",
			text: "[plugins.fake]\npath = \"x\"\nstart_timeout = \"soon\"\n",
			line: 3, key: "plugins.fake.start_timeout", msg: "soon",
		},
		{
			name: "missing required path",
			text: "[plugins.fake]\nargs = []\n",
			line: 1, key: "plugins.fake.path", msg: "missing",
		},
		{
			name: "bad checksum",
			text: "[plugins.fake]\npath = \"x\"\nsha256 = \"123\"\n",
			line: 3, key: "plugins.fake.sha256", msg: "64 hex digits",
		},
		{
			name: "vm names an unknown plugin",
			text: "[plugins.fake]\npath = \"x\"\n[vms.a]\nplugin = \"vbox\"\n",
			line: 4, key: "vms.a.plugin", msg: `no plugin named "vbox"`,
		},
		{
			name: "syntax error",
			text: "[plugins.fake]\npath = \"x\n",
			line: 2, msg: "",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse("conf/sandbox.toml", []byte(tc.text))
			var ce *configfile.Error
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, "conf/sandbox.toml", ce.File)
			assert.Equal(t, tc.line, ce.Line, "error: %v", err)
			if tc.key != "" {
				assert.Equal(t, tc.key, ce.Key)
			}
			assert.Contains(t, ce.Msg, tc.msg)
		})
	}
}

func TestPluginTablesAreLeftToThePlugin(t *testing.T) {
	cfg, err := config.Parse("c.toml", []byte("[plugins.fake]\npath = \"x\"\n[plugins.fake.config]\nanything = 1\n[plugins.fake.config.deep]\nmore = true\n"))
	require.NoError(t, err)
	assert.Contains(t, string(cfg.Data), "anything", "the text is kept for the plugin")
}

func TestAnEmptyFileIsValid(t *testing.T) {
	cfg, err := config.Parse("c.toml", nil)
	require.NoError(t, err)
	assert.Empty(t, cfg.Plugins)
	assert.NotNil(t, cfg.VMs)
}

func TestMissingFileSaysWhatToDo(t *testing.T) {
	_, err := config.Load(filepath.Join(t.TempDir(), "nope.toml"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nope.toml does not exist")
	assert.Contains(t, err.Error(), "--config")
}

func TestUnreadableFileIsAnError(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "c.toml"), 0o755))
	_, err := config.Load(filepath.Join(dir, "c.toml"))
	assert.Error(t, err)
}
