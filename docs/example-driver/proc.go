package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// The "hypervisor" of this driver is the kernel's process table. Its own
// word for a process's state is the state letter of /proc/PID/stat; the
// driver maps the letters it understands and reports the rest as unknown,
// never as off (contract §3.2).
var letters = map[byte]struct {
	raw   string
	power hypervisor.PowerState
}{
	'R': {"running", hypervisor.PowerRunning},
	'S': {"sleeping", hypervisor.PowerRunning},
	'D': {"disk-sleep", hypervisor.PowerRunning},
	'I': {"idle", hypervisor.PowerRunning},
	'T': {"stopped", hypervisor.PowerPaused},
	// A zombie has exited but was not reaped yet: on its way off.
	'Z': {"zombie", hypervisor.PowerStopping},
}

// processState reads what the kernel says about pid. gone is true when no
// such process exists. Without /proc (macOS, the BSDs) a live process is
// reported running, the best a signal can tell.
func processState(pid int) (raw string, power hypervisor.PowerState, gone bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && procMounted() {
			return "", "", true
		}
		if syscall.Kill(pid, 0) != nil {
			return "", "", true
		}
		return "alive", hypervisor.PowerRunning, false
	}
	// The command name in parentheses may hold spaces: the state letter is
	// the first field after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return string(data), hypervisor.PowerUnknown, false
	}
	letter := data[i+2]
	if l, ok := letters[letter]; ok {
		return l.raw, l.power, false
	}
	return string(letter), hypervisor.PowerUnknown, false
}

func procMounted() bool {
	_, err := os.Stat("/proc/self/stat")
	return err == nil
}
