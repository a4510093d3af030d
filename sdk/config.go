package sdk

import (
	"path/filepath"

	"github.com/sandboxhq/sandbox/core/configfile"
)

// Config is the plugin's own table of the host's configuration file, e.g.
// [plugins.fake.config], as the host sent it when it launched the plugin.
type Config struct {
	// Plugin is the plugin's name in the host's configuration ("fake").
	Plugin string
	// File is the configuration file's path, for messages.
	File string
	// Dir is the directory relative paths in the table are resolved
	// against: the configuration file's directory.
	Dir string
	// Table is the key path of the plugin's table, e.g. plugins.fake.config.
	Table []string
	// Data is the whole configuration file's text; Decode reads only Table.
	Data []byte

	// docs is where the table's keys are documented (WithConfigDocs);
	// the plugin sets it, the host never sends it.
	docs string
}

// pluginDocs is the hint of an unknown key in a plugin's table when the
// plugin does not say where its table is documented.
const pluginDocs = "the plugin's own documentation"

// Decode decodes the plugin's table strictly into v, a pointer to a
// TOML-tagged struct. Unknown keys and wrong types come back as
// *configfile.Error naming the file, the line and the full key, an unknown
// key with where the table is documented (WithConfigDocs); return that
// error from the driver factory and the operator sees it as it is.
// An absent table decodes as empty, leaving v's defaults in place.
func (c Config) Decode(v any) error {
	docs := c.docs
	if docs == "" {
		docs = pluginDocs
	}
	return c.document().Decode(v, configfile.At(c.Table...), configfile.Docs(docs))
}

// Errorf returns an error for a key of the plugin's table (given relative
// to it, e.g. "vms", "win10", "snapshots"), with its line, for mistakes
// only the driver can see: a missing required key, a value out of range.
func (c Config) Errorf(key []string, format string, args ...any) error {
	full := append(append([]string{}, c.Table...), key...)
	return c.document().Errorf(full, format, args...)
}

// Path resolves p against Dir unless it is absolute or empty.
func (c Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) || c.Dir == "" {
		return p
	}
	return filepath.Join(c.Dir, p)
}

func (c Config) document() configfile.Document {
	return configfile.Document{File: c.File, Data: c.Data}
}

// ConfigFromTOML builds a Config from TOML text whose plugin table is at
// plugins.<plugin>.config, for tests and in-process drivers.
func ConfigFromTOML(plugin, file string, data []byte) Config {
	return Config{
		Plugin: plugin,
		File:   file,
		Dir:    filepath.Dir(file),
		Table:  []string{"plugins", plugin, "config"},
		Data:   data,
	}
}
