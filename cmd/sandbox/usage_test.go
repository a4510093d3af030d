package main_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Mistakes on the command line or in config.toml get a message that says
// what is wrong and what to do, and the exit status that goes with it.
func TestMistakesGetAClearMessageAndTheRightStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		config string
		args   []string
		code   int
		want   string
		never  string
	}{
		{"an unknown vm subcommand", fakeConfig(""), []string{"vm", "frobnicate"}, 2, `unknown command "frobnicate" for "sandbox vm"`, "argument"},
		{"a config without plugins", "", []string{"vm", "status", "vm1"}, 1, "declares no plugin", "(searched )"},
		{"an unknown --plugin for vm status", fakeConfig(""), []string{"vm", "status", "--plugin", "vbox", "linux"}, 2, `no plugin named "vbox"`, ""},
		{"an unknown --plugin for conformance", fakeConfig(""), []string{"conformance", "--plugin", "vbox"}, 2, `no plugin named "vbox"`, ""},
		{"a negative --settle", fakeConfig(""), []string{"conformance", "--plugin", "fake", "--settle", "-5s"}, 2, "--settle", ""},
		{"a negative --margin", fakeConfig(""), []string{"conformance", "--plugin", "fake", "--margin", "-1s"}, 2, "--margin", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := sandbox(t, tc.config, tc.args...)
			assert.Equal(t, tc.code, r.code, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
			assert.Contains(t, r.stderr, tc.want)
			if tc.never != "" {
				assert.NotContains(t, r.stderr, tc.never)
			}
		})
	}
}

// A TOML syntax error names the line it is on, not the next one.
func TestATOMLSyntaxErrorNamesItsOwnLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ text, want string }{
		{"[plugins.fake\npath = \"x\"\n", "config.toml:2:"},
		{"[plugins.fake]\npath = \n\n", "config.toml:3:"},
		{"[plugins.fake]\npath = \"x\" y\n\n", "config.toml:3:"},
	} {
		r := sandbox(t, tc.text, "vm", "list")
		assert.Equal(t, 1, r.code)
		assert.Contains(t, r.stderr, tc.want, "%q", tc.text)
	}
}

// A plugin that cannot be run says which setting to fix.
func TestAPluginThatCannotRunNamesItsSetting(t *testing.T) {
	t.Parallel()
	if runtime.GOOS == "windows" {
		t.Skip("Windows has no executable bit")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "plugin.sh")
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\necho hello\n"), 0o644))
	r := sandbox(t, fmt.Sprintf("[plugins.fake]\npath = %q\n", script), "vm", "list")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "is not executable (plugins.fake.path in ")
	assert.Contains(t, r.stderr, "chmod +x")

	require.NoError(t, os.Chmod(script, 0o755))
	r = sandbox(t, fmt.Sprintf("[plugins.fake]\npath = %q\n", script), "vm", "list")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, `printed "hello" instead of the plugin handshake; is plugins.fake.path`)
	assert.NotContains(t, r.stderr, "path ,")
	assert.NotContains(t, r.stderr, "[WARN]", "a failed launch is one clear line, not go-plugin's chatter")
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(r.stderr), "\n")+1, "one line: %s", r.stderr)
}

// A VM name with a tab, a newline or other control characters does not
// break the table it is listed in.
func TestControlCharactersInAVMNameKeepTheTableIntact(t *testing.T) {
	t.Parallel()
	conf := fmt.Sprintf("[plugins.fake]\npath = %q\n[plugins.fake.config.vms.\"tab\\there\"]\n[plugins.fake.config.vms.plain]\n", fakeBin)
	r := sandbox(t, conf, "vm", "list")
	require.Equal(t, 0, r.code, r.stderr)
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	require.Len(t, lines, 3, r.stdout)
	assert.Contains(t, lines[2], `"tab\there"`, "shown quoted, escaped")
	for _, l := range lines[1:] {
		assert.Equal(t, strings.Index(lines[0], "POWER"), strings.Index(l, "off"), "columns line up: %q", l)
	}
	r = sandbox(t, conf, "--json", "vm", "list")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"name": "tab\there"`, "JSON keeps the name as it is")
}

// A VM name of 117 bytes of UTF-8 works for every command, leases included.
func TestALongUTF8VMNameWorksThroughout(t *testing.T) {
	t.Parallel()
	name := strings.Repeat("虚", 39)
	conf := fmt.Sprintf("[plugins.fake]\npath = %q\n[plugins.fake.config.vms.%q]\nstate = \"running\"\nsnapshots = [\"clean\"]\n", fakeBin, name)
	dir := t.TempDir()
	for _, args := range [][]string{{"vm", "status", name}, {"vm", "stop", name}, {"vm", "cleanup", name}} {
		r := sandboxIn(t, dir, conf, args...)
		assert.Equal(t, 0, r.code, "%v: %s", args, r.stderr)
	}
}

// A state directory others can write to is refused before anything runs.
func TestAStateDirOthersCanWriteIsRefused(t *testing.T) {
	t.Parallel()
	if runtime.GOOS == "windows" {
		t.Skip("Windows has ACLs, not modes")
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	require.NoError(t, os.Mkdir(state, 0o700))
	require.NoError(t, os.Chmod(state, 0o777))
	r := sandboxIn(t, dir, fakeConfig(""), "vm", "cleanup", "linux")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "writable by its group or by others")
	assert.Contains(t, r.stderr, "chmod 700")
}

// A damaged quarantine file is an error the operator sees, whichever VM is
// cleaned.
func TestADamagedQuarantineFileFailsACleanup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := fakeConfig("")
	r := sandboxIn(t, dir, conf, "vm", "status", "linux")
	require.Equal(t, 0, r.code, r.stderr)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "state"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "state", "quarantine.json"), []byte("{\"fake/win10-64-defender\": {"), 0o600))
	r = sandboxIn(t, dir, conf, "vm", "cleanup", "linux")
	assert.Equal(t, 1, r.code, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
	assert.Contains(t, r.stdout+r.stderr, "quarantine.json is damaged")
	r = sandboxIn(t, dir, conf, "--json", "vm", "cleanup", "linux")
	assert.Equal(t, 1, r.code)
	var rep struct{ Error string }
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	assert.Contains(t, rep.Error, "quarantine.json is damaged")
}
