package qemu_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/plugins/qemu"
	"github.com/sandboxhq/sandbox/plugins/qemu/internal/qmp"
	"github.com/sandboxhq/sandbox/sdk"
)

// The QEMU benchmarks report ratios against baselines measured in the
// same run, never absolute times: machines are shared and noisy.

func median(xs []time.Duration) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func seconds(d time.Duration) float64 { return d.Seconds() }

// loadvmResume is QEMU's own fast start, the baseline: the emulator
// launched with -loadvm on the machine the driver would build, until its
// monitor says running. The process is killed afterwards.
func loadvmResume(b *testing.B, r *rig, vm string) time.Duration {
	running, _ := loadvm(b, r, vm, false)
	return running
}

// loadvm launches QEMU on the machine the driver would build for vm,
// resuming its snapshot ready with -loadvm, and times how long until QMP
// says running and, with agent, until the guest agent answers too; then
// it kills QEMU and waits for it to exit.
func loadvm(b *testing.B, r *rig, vm string, agent bool) (running, answering time.Duration) {
	b.Helper()
	qemuBin, args, err := qemu.LaunchArgs(sdk.ConfigFromTOML("qemu", r.file, []byte(r.config)), vm, "ready")
	if err != nil {
		b.Fatal(err)
	}
	_ = os.MkdirAll(filepath.Join(r.dir, "s", vm), 0o755)
	for _, f := range []string{"qemu.pid", "qmp.sock", "qga.sock"} {
		_ = os.Remove(r.vmFile(vm, f))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	begun := time.Now()
	cmd := exec.Command(qemuBin, args...)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	for {
		m, err := qmp.DialMonitor(ctx, r.vmFile(vm, "qmp.sock"))
		if err == nil {
			st, err := m.QueryStatus(ctx)
			m.Close()
			if err == nil && st.Status == "running" {
				running = time.Since(begun)
				break
			}
		}
		if ctx.Err() != nil {
			b.Fatalf("QEMU -loadvm did not answer: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	if !agent {
		return running, 0
	}
	a, err := qmp.DialAgent(ctx, r.vmFile(vm, "qga.sock"))
	if err != nil {
		b.Fatalf("the guest agent of a -loadvm resume did not answer: %v", err)
	}
	answering = time.Since(begun)
	_ = a.Close()
	return running, answering
}

// BenchmarkRestoreToRunning times the driver's restore of a VM to its
// running snapshot and start, until Status says running, against QEMU's
// own -loadvm resume of the same snapshot on the same machine, alternated
// in one run. ratio is driver/baseline (the goal: at most 1.2).
func BenchmarkRestoreToRunning(b *testing.B) {
	r := newRig(b, guestVM("drv", "ready"), guestVM("base", "ready"))
	d := r.driver(b)
	ctx := context.Background()
	var drv, base []time.Duration
	for b.Loop() {
		base = append(base, loadvmResume(b, r, "base"))
		begun := time.Now()
		if err := d.Restore(ctx, "drv", "ready"); err != nil {
			b.Fatal(err)
		}
		if err := d.Start(ctx, "drv"); err != nil {
			b.Fatal(err)
		}
		for {
			st, err := d.Status(ctx, "drv")
			if err != nil {
				b.Fatal(err)
			}
			if st.Power == hypervisor.PowerRunning {
				break
			}
		}
		drv = append(drv, time.Since(begun))
		if err := d.Stop(ctx, "drv", hypervisor.StopPowerOff); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(seconds(median(drv)), "driver-s")
	b.ReportMetric(seconds(median(base)), "loadvm-s")
	b.ReportMetric(float64(median(drv))/float64(median(base)), "ratio")
}

// BenchmarkCleanupIgnoredACPI times the core's cleanup (stop ladder,
// native cleanup off) of a running guest that ignores the power button,
// with a 1 s ACPI deadline, against the baseline of that second plus a
// hard stop of the same guest (power-off until Status says off), measured
// in the same run. over-s is what the cleanup took beyond 1.2 s plus the
// hard stop (the goal: at most 0); ratio is cleanup/(1 s + hard stop).
func BenchmarkCleanupIgnoredACPI(b *testing.B) {
	r := newRig(b, guestVM("deaf", "ready-ignore-acpi"))
	d := r.driver(b)
	ctx := context.Background()
	s := config.DefaultLifecycle()
	s.StopLadder = []string{config.StopACPI, config.StopPowerOff, config.StopEmergency}
	s.ACPITimeout = time.Second
	s.NativeCleanup = false
	s.Snapshot = "ready-ignore-acpi"
	m := lifecycle.New(lifecycle.Options{})
	vm := lifecycle.VM{Name: "deaf", Plugin: "qemu", Driver: d, Settings: s}
	start := func() {
		if err := d.Start(ctx, "deaf"); err != nil {
			b.Fatal(err)
		}
	}
	var cleanups, hards []time.Duration
	for b.Loop() {
		start()
		begun := time.Now()
		if err := d.Stop(ctx, "deaf", hypervisor.StopPowerOff); err != nil {
			b.Fatal(err)
		}
		for {
			st, err := d.Status(ctx, "deaf")
			if err != nil {
				b.Fatal(err)
			}
			if st.Power.IsOff() {
				break
			}
		}
		hards = append(hards, time.Since(begun))
		if err := d.Restore(ctx, "deaf", ""); err != nil {
			b.Fatal(err)
		}
		start()
		begun = time.Now()
		if _, err := m.Cleanup(ctx, vm); err != nil {
			b.Fatalf("cleanup: %v", err)
		}
		cleanups = append(cleanups, time.Since(begun))
		if st, err := d.Status(ctx, "deaf"); err != nil || !st.Power.IsOff() || st.Lock != hypervisor.LockUnlocked {
			b.Fatalf("after the cleanup the VM is %+v (%v)", st, err)
		}
	}
	c, h := median(cleanups), median(hards)
	b.ReportMetric(seconds(c), "cleanup-s")
	b.ReportMetric(seconds(h), "hardstop-s")
	b.ReportMetric(seconds(c-(1200*time.Millisecond+h)), "over-s")
	b.ReportMetric(float64(c)/float64(time.Second+h), "ratio")
}
