package configfile_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/configfile"
)

const doc = `# sandbox
[plugins.fake]
path = "bin/sandbox-plugin-fake"

[plugins.fake.config]
tick = "5ms"

[plugins.fake.config.vms."win10-64-defender"]
snapshots = ["clean"]
"power off" = "1s"
text = """
a = 1
"""
ram = 4096
`

type vmConf struct {
	Snapshots []string      `toml:"snapshots"`
	PowerOff  time.Duration `toml:"power off"`
	Text      string        `toml:"text"`
	RAM       int           `toml:"ram"`
}

type pluginConf struct {
	Tick time.Duration     `toml:"tick"`
	VMs  map[string]vmConf `toml:"vms"`
}

func TestDecodeTableAtPrefix(t *testing.T) {
	d := configfile.Document{File: "config.toml", Data: []byte(doc)}
	var c pluginConf
	require.NoError(t, d.Decode(&c, configfile.At("plugins", "fake", "config")))
	assert.Equal(t, 5*time.Millisecond, c.Tick)
	assert.Equal(t, time.Second, c.VMs["win10-64-defender"].PowerOff)
	assert.Equal(t, 4096, c.VMs["win10-64-defender"].RAM)
}

func TestUnknownKeyNamesFileLineAndKey(t *testing.T) {
	d := configfile.Document{File: "config.toml", Data: []byte(doc)}
	var c struct {
		Tick time.Duration `toml:"tick"`
	}
	err := d.Decode(&c, configfile.At("plugins", "fake", "config"))
	var ce *configfile.Error
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 8, ce.Line)
	assert.Equal(t, `plugins.fake.config.vms.win10-64-defender`, ce.Key)
	assert.Contains(t, err.Error(), "config.toml:8: plugins.fake.config.vms.win10-64-defender: unknown key")
}

func TestUnknownKeyBelowMultilineStringHasRightLine(t *testing.T) {
	d := configfile.Document{File: "c.toml", Data: []byte(doc)}
	var c struct {
		Tick time.Duration `toml:"tick"`
		VMs  map[string]struct {
			Snapshots []string      `toml:"snapshots"`
			PowerOff  time.Duration `toml:"power off"`
			Text      string        `toml:"text"`
		} `toml:"vms"`
	}
	err := d.Decode(&c, configfile.At("plugins", "fake", "config"))
	require.Error(t, err)
	assert.Equal(t, `c.toml:14: plugins.fake.config.vms.win10-64-defender.ram: unknown key; check its spelling against docs/configuration.md`, err.Error())
}

func TestWrongTypeNamesLine(t *testing.T) {
	d := configfile.Document{File: "config.toml", Data: []byte("[a]\nn = \"many\"\n")}
	var c struct {
		A struct {
			N int `toml:"n"`
		} `toml:"a"`
	}
	err := d.Decode(&c)
	var ce *configfile.Error
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 2, ce.Line)
	assert.Equal(t, "a.n", ce.Key)
	assert.Contains(t, ce.Msg, "incompatible types")
}

func TestSyntaxErrorNamesLine(t *testing.T) {
	d := configfile.Document{File: "config.toml", Data: []byte("[a]\nn = = 1\n")}
	var c struct{}
	err := d.Decode(&c)
	var ce *configfile.Error
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 2, ce.Line)
	assert.Contains(t, err.Error(), "config.toml:2:")
}

// An error found at the end of a line (the newline itself) is on that
// line, not the next.
func TestSyntaxErrorAtTheEndOfALineNamesThatLine(t *testing.T) {
	d := configfile.Document{File: "c.toml", Data: []byte("a = 1\n[plugins.fake\npath = \"x\"\n")}
	var v map[string]any
	err := d.Decode(&v)
	var ce *configfile.Error
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 2, ce.Line, "%v", err)
}

func TestIgnoredKeysAreSomeoneElses(t *testing.T) {
	d := configfile.Document{File: "config.toml", Data: []byte(doc)}
	var c struct {
		Plugins map[string]struct {
			Path string `toml:"path"`
		} `toml:"plugins"`
	}
	require.NoError(t, d.Decode(&c, configfile.Ignore("plugins.*.config")))
	assert.Equal(t, "bin/sandbox-plugin-fake", c.Plugins["fake"].Path)
}

func TestMissingTableDecodesEmpty(t *testing.T) {
	d := configfile.Document{File: "config.toml", Data: []byte(doc)}
	var c pluginConf
	require.NoError(t, d.Decode(&c, configfile.At("plugins", "other", "config")))
	assert.Zero(t, c.Tick)
}

func TestABareNumberIsNotADuration(t *testing.T) {
	type inner struct {
		Wait *time.Duration `toml:"wait"`
		N    int            `toml:"n"`
	}
	type embedded struct {
		Grace time.Duration `toml:"grace"`
	}
	var c struct {
		Timeout time.Duration    `toml:"timeout"`
		Count   int              `toml:"count"`
		VMs     map[string]inner `toml:"vms"`
		embedded
	}
	for _, tc := range []struct{ text, key string }{
		{"timeout = 10\n", "timeout"},
		{"[vms.a]\nn = 3\nwait = 250\n", "vms.a.wait"},
		{"grace = 5\n", "grace"},
	} {
		d := configfile.Document{File: "c.toml", Data: []byte(tc.text)}
		err := d.Decode(&c)
		var ce *configfile.Error
		require.ErrorAs(t, err, &ce, tc.text)
		assert.Equal(t, tc.key, ce.Key)
		assert.Contains(t, ce.Msg, `a duration needs a unit`)
		assert.Positive(t, ce.Line)
	}
	d := configfile.Document{File: "c.toml", Data: []byte("timeout = \"10s\"\ncount = 3\n[vms.a]\nn = 1\n")}
	require.NoError(t, d.Decode(&c), "numbers where numbers belong, strings for durations")
	assert.Equal(t, 10*time.Second, c.Timeout)
}
