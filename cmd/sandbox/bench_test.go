//go:build linux

package main_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxhq/sandbox/sdk/plugintest"
	"github.com/stretchr/testify/require"
)

// BenchmarkRun200VMs runs one analysis on each of 200 fake VMs in one
// `sandbox run` and reports the peak memory of the sandbox process and of
// its fake plugin. The host must stay under 150 MB.
func BenchmarkRun200VMs(b *testing.B) {
	const vms = 200
	dir := b.TempDir()
	var conf strings.Builder
	fmt.Fprintf(&conf, "state_dir = \"state\"\n[engine]\nmax_starting = 50\n[plugins.fake]\npath = %q\n", fakeBin)
	conf.WriteString("[plugins.fake.config.timing]\nstart = \"30ms\"\nguest_ready = \"50ms\"\nrestore = \"30ms\"\npoweroff = \"30ms\"\nunlock_after_stop = \"30ms\"\n")
	var names []string
	for i := range vms {
		name := fmt.Sprintf("vm%03d", i)
		names = append(names, strconv.Quote(name))
		fmt.Fprintf(&conf, "[plugins.fake.config.vms.%s]\nsnapshots = [\"clean\"]\n[vms.%s]\nplugin = \"fake\"\nsnapshot = \"clean\"\n", name, name)
	}
	fmt.Fprintf(&conf, "[profiles.p]\nvms = [%s]\nsample_path = \"/s/{sha256}\"\ncommand = [\"sleep\", \"1\"]\n"+
		"[profiles.p.verdict]\nmalicious_exit_codes = [1]\n", strings.Join(names, ", "))
	require.NoError(b, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf.String()), 0o644))
	var samples []string
	for i := range vms {
		samples = append(samples, textFile(b, b.TempDir(), fmt.Sprintf("s%03d", i), fmt.Sprint(i)))
	}
	var hostMB, pluginMB, wall float64
	for b.Loop() {
		cmd := exec.Command(sandboxBin, append([]string{"--config", filepath.Join(dir, "config.toml"), "--json", "run",
			"--out", b.TempDir()}, samples...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		begun := time.Now()
		require.NoError(b, cmd.Start())
		peak := make(chan float64, 1)
		go func() { peak <- pluginPeak(cmd.Process.Pid) }()
		require.NoError(b, cmd.Wait(), errOut.String())
		wall = time.Since(begun).Seconds()
		var res runJSON
		require.NoError(b, json.Unmarshal(out.Bytes(), &res))
		require.Len(b, res.Reports, vms)
		for _, r := range res.Reports {
			require.Equal(b, "clean", string(r.Verdict), r.Results[0].Error)
		}
		hostMB = float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024
		pluginMB = <-peak
	}
	b.ReportMetric(hostMB, "host-MB")
	b.ReportMetric(pluginMB, "plugin-MB")
	b.ReportMetric(wall, "wall-s")
	if hostMB >= 150 {
		b.Errorf("the sandbox process peaked at %.0f MB with %d VMs; the bound is 150 MB", hostMB, vms)
	}
}

// pluginPeak follows the children of pid until they are gone and returns
// the largest peak resident size (VmHWM) seen, in MB.
func pluginPeak(pid int) float64 {
	peak := 0.0
	for !plugintest.Gone(pid) {
		for _, child := range childPids(pid) {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", child))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(data), "\n") {
				if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
					kb, _ := strconv.ParseFloat(f[1], 64)
					peak = max(peak, kb/1024)
				}
			}
		}
		time.Sleep(50 * time.Millisecond) // sampling another process's memory; nothing to wait on
	}
	return peak
}
