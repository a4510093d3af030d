package qemu

import "github.com/sandboxhq/sandbox/sdk"

// LaunchArgs returns the emulator and the command line the driver would
// run for VM name of cfg, resuming snapshot resume: the benchmarks time
// QEMU's own -loadvm on the very same machine.
func LaunchArgs(cfg sdk.Config, name, resume string) (string, []string, error) {
	s, err := load(cfg)
	if err != nil {
		return "", nil, err
	}
	d := &Driver{cfg: s}
	return s.QEMU, d.commandLine(s.vms[name], resume), nil
}
