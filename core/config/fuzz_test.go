package config_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/configfile"
)

// FuzzParse feeds the configuration loader arbitrary text. Whatever the
// text, Parse must not panic; a mistake must come back as a
// *configfile.Error naming the file and a line of it; and what it accepts
// must be settings every component can use as they are.
func FuzzParse(f *testing.F) {
	shipped, err := os.ReadFile(filepath.Join("..", "..", "config.toml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(shipped)
	for _, s := range []string{
		"",
		"state_dir = \"state\"\n",
		"[plugins.fake]\npath = \"bin/sandbox-plugin-fake\"\nargs = [\"--max-protocol=1\"]\nenv = [\"A\", \"B=c\"]\n" +
			"start_timeout = \"5s\"\nauto_mtls = false\nsha256 = \"" + string(bytes.Repeat([]byte("ab"), 32)) + "\"\n",
		"[plugins.fake.config.vms.vm1]\nstate = \"running\"\n[plugins.fake.config.vms.vm1.faults]\nslow = \"1s\"\n",
		"[lifecycle]\nstop_ladder = [\"poweroff\", \"emergency\"]\npoll_interval = \"1ms\"\npoll_max_interval = \"1ms\"\n",
		"[vms.\"win 10\"]\nplugin = \"fake\"\nsnapshot = \"clean\"\nrestore_on_cleanup = false\n[plugins.fake]\npath = \"x\"\n",
		"[lifecycle]\npoll_interval = \"1s\"\npoll_max_interval = \"1ms\"\n",
		"[plugins.fake\npath = \"x\"\n",
		"a = \"\"\"\nmulti\nline\n\"\"\"\n[b]\nc = 1\n",
		"[[plugins]]\n",
		"[vms.a]\nacpi_timeout = 30\n",
		"[profiles.p]\nvms = [\"a\"]\nsample_path = \"/tmp/{name}\"\ncommand = [\"scan\", \"{sample}\"]\n" +
			"[profiles.p.verdict]\nmalicious_exit_codes = [1]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const path = "fuzz/config.toml"
		cfg, err := config.Parse(path, data)
		if err != nil {
			var ce *configfile.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %T %q names no file, line or key", err, err)
			}
			if ce.File != path {
				t.Fatalf("error names file %q, not %q: %v", ce.File, path, err)
			}
			if lines := bytes.Count(data, []byte("\n")) + 1; ce.Line < 0 || ce.Line > lines {
				t.Fatalf("error names line %d of a %d-line file: %v", ce.Line, lines, err)
			}
			return
		}
		if cfg.StateDir == "" || !filepath.IsAbs(cfg.StateDir) && filepath.Dir(filepath.Clean(cfg.StateDir)) == "." {
			t.Fatalf("state_dir %q is neither absolute nor beside the file", cfg.StateDir)
		}
		for name, p := range cfg.Plugins {
			if p.Path == "" || p.StartTimeout <= 0 {
				t.Fatalf("accepted plugin %q that cannot be launched: %+v", name, p)
			}
		}
		for _, vm := range append(sortedVMs(cfg), "not-configured") {
			l := cfg.LifecycleOf(vm)
			if len(l.StopLadder) == 0 || l.PollInterval > l.PollMaxInterval || l.PollInterval < config.MinPollInterval ||
				l.CleanupTimeout <= 0 || l.RestoreTimeout <= 0 || l.StartTimeout <= 0 || l.StatusTimeout <= 0 {
				t.Fatalf("accepted settings for %q that no operation can use: %+v", vm, l)
			}
		}
		for name, p := range cfg.Profiles {
			if len(p.VMs) == 0 || len(p.Command) == 0 || p.Timeout <= 0 || p.ReadyTimeout <= 0 || p.CopyTimeout <= 0 ||
				(len(p.Verdict.MaliciousExitCodes) == 0 && p.Verdict.Malicious == nil) {
				t.Fatalf("accepted profile %q that cannot run or judge: %+v", name, p)
			}
		}
		again, err := config.Parse(path, data)
		if err != nil || !reflect.DeepEqual(cfg, again) {
			t.Fatalf("the same text parsed twice differs: %v", err)
		}
	})
}

func sortedVMs(cfg *config.Config) []string {
	var names []string
	for n := range cfg.VMs {
		names = append(names, n)
	}
	return names
}
