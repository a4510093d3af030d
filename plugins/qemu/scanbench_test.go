package qemu_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The scanning benchmarks drive the engine as users do, through the
// sandbox CLI (`sandbox --json run`), on VMs of the test guest running
// the ClamAV profile of docs/examples/qemu.toml, and read the time of each
// step from the reports' transitions.

// scanRig is a CLI configuration of n VMs of the test guest, scan-1 to
// scan-n, and the example's ClamAV profile on all of them.
func scanRig(b *testing.B, n int) (*rig, string) {
	b.Helper()
	var specs []vmSpec
	var names []string
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("scan-%d", i)
		specs = append(specs, guestVM(name, "ready"))
		names = append(names, fmt.Sprintf("%q", name))
	}
	r := newRig(b, specs...)
	data, err := os.ReadFile(exampleConfig)
	if err != nil {
		b.Fatal(err)
	}
	profile := profileTables(b, string(data), "clamav")
	var vmsLine string
	for _, l := range strings.Split(profile, "\n") {
		if strings.HasPrefix(l, "vms = ") {
			vmsLine = l
		}
	}
	if vmsLine == "" {
		b.Fatal("the example's clamav profile has no vms line")
	}
	profile = strings.Replace(profile, vmsLine, "vms = ["+strings.Join(names, ", ")+"]", 1)
	var c strings.Builder
	fmt.Fprintf(&c, "state_dir = %q\n[plugins.qemu]\npath = %q\n%s", filepath.Join(r.dir, "cli-state"), programs.path(b, pluginPkg), r.config)
	for _, v := range r.vms {
		fmt.Fprintf(&c, "[vms.%s]\nplugin = \"qemu\"\nsnapshot = \"ready\"\n", v.name)
	}
	c.WriteString(profile)
	file := filepath.Join(r.dir, "cli.toml")
	if err := os.WriteFile(file, []byte(c.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	return r, file
}

// benchSamples are the first m of ClamAV's test files, smallest first.
func benchSamples(b *testing.B, m int) []string {
	b.Helper()
	files := testFiles(b)
	size := func(f string) int64 {
		st, err := os.Stat(f)
		if err != nil {
			b.Fatal(err)
		}
		return st.Size()
	}
	slices.SortFunc(files, func(x, y string) int { return int(size(x) - size(y)) })
	if m > len(files) {
		b.Fatalf("%d samples wanted, %d test files", m, len(files))
	}
	return files[:m]
}

// stepTimes is how long each task stayed in each step, from the reports:
// step name to one duration per task.
type stepTimes map[string][]time.Duration

// scanRun runs the samples through the CLI once, checks that every task
// ended done and malicious (each is a ClamAV test file), and returns the
// run's wall time, the per-step times and each task's overhead: its time
// from preparing to done, less the scan itself (analyzing).
func scanRun(b *testing.B, file string, samples []string) (time.Duration, stepTimes, []time.Duration) {
	b.Helper()
	begun := time.Now()
	out := sandboxRun(b, file, samples...)
	wall := time.Since(begun)
	steps := stepTimes{}
	var overheads []time.Duration
	tasks := 0
	for _, rep := range out.Reports {
		for _, res := range rep.Results {
			tasks++
			if res.State != "done" || res.Verdict != "malicious" {
				b.Fatalf("%s on %s ended %s with %s: %s %s", rep.Sample.Name, res.VM, res.State, res.Verdict, res.Error, res.Stderr)
			}
			tr := res.Transitions
			var overhead time.Duration
			for i := 0; i+1 < len(tr); i++ {
				d := tr[i+1].At.Sub(tr[i].At)
				steps[tr[i].Step] = append(steps[tr[i].Step], d)
				if tr[i].Step != "queued" && tr[i].Step != "analyzing" {
					overhead += d
				}
			}
			overheads = append(overheads, overhead)
		}
	}
	if tasks != len(samples) {
		b.Fatalf("%d tasks for %d samples", tasks, len(samples))
	}
	return wall, steps, overheads
}

// report puts the median of each step, in seconds, among b's metrics.
func (s stepTimes) report(b *testing.B) {
	for step, ds := range s {
		if step != "queued" {
			b.ReportMetric(seconds(median(ds)), step+"-s")
		}
	}
}

// BenchmarkScanThroughput runs 40 of ClamAV's test files (all but the four
// largest) through the example's ClamAV profile on two and on four VMs of
// the test guest at once, and reports the analyses an hour this host does
// and the median time of each step of a task. The engine's default of two
// VMs starting at once holds.
func BenchmarkScanThroughput(b *testing.B) {
	const m = 40
	for _, n := range []int{2, 4} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			_, file := scanRig(b, n)
			samples := benchSamples(b, m)
			var walls []time.Duration
			steps := stepTimes{}
			for b.Loop() {
				wall, s, _ := scanRun(b, file, samples)
				walls = append(walls, wall)
				for k, v := range s {
					steps[k] = append(steps[k], v...)
				}
			}
			w := median(walls)
			b.ReportMetric(seconds(w), "wall-s")
			b.ReportMetric(float64(m)*float64(time.Hour)/float64(w), "analyses/h")
			steps.report(b)
		})
	}
}

// BenchmarkTaskOverhead compares what a task costs besides the scan itself
// (preparing, restoring, starting, waiting for the guest, copying the
// sample in, cleaning: everything from preparing to done but analyzing),
// one task at a time on one VM through the CLI, with QEMU's own resume of
// the same snapshot on the same machine: launched with -loadvm until the
// guest agent answers (a guest that can take a sample), then killed: three
// times before and three times after a run of six samples, tasks as a
// service runs them, one after the other in one process. (The one task of
// a run of its own starts slower, beside the start of sandbox and its
// plugin.) ratio is median overhead / median resume (the goal: at most
// 1.5).
func BenchmarkTaskOverhead(b *testing.B) {
	_, file := scanRig(b, 1)
	base := newRig(b, guestVM("base", "ready"))
	samples := benchSamples(b, 6)
	var overheads, resumes, runnings []time.Duration
	steps := stepTimes{}
	baselines := func() {
		for range 3 {
			running, agent := loadvm(b, base, "base", true)
			runnings = append(runnings, running)
			resumes = append(resumes, agent)
		}
	}
	for b.Loop() {
		baselines()
		_, s, o := scanRun(b, file, samples)
		overheads = append(overheads, o...)
		for k, v := range s {
			steps[k] = append(steps[k], v...)
		}
		baselines()
	}
	o, l := median(overheads), median(resumes)
	b.ReportMetric(seconds(o), "overhead-s")
	b.ReportMetric(seconds(l), "loadvm-agent-s")
	b.ReportMetric(seconds(median(runnings)), "loadvm-running-s")
	b.ReportMetric(float64(o)/float64(l), "ratio")
	steps.report(b)
}
