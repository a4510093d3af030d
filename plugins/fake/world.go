package fake

import (
	"bytes"
	"time"

	"github.com/BurntSushi/toml"
)

// TOML renders c as the table [plugins.NAME.config] of a configuration
// file: what a test or a tool that launches the fake writes, instead of
// the table by hand. Keys at their zero value are left out, but for
// timing, which is written whole.
func (c Config) TOML(plugin string) string {
	var b bytes.Buffer
	doc := map[string]any{"plugins": map[string]any{plugin: map[string]any{"config": c}}}
	if err := toml.NewEncoder(&b).Encode(doc); err != nil {
		// Every field of Config encodes; a failure is a bug here.
		panic("fake: encode a Config: " + err.Error())
	}
	return b.String()
}

// FastTiming is a timing for tests: every transition within a few tens of
// milliseconds, the order of events as with the defaults.
func FastTiming() Timing {
	return Timing{
		Start:           20 * time.Millisecond,
		ACPIShutdown:    30 * time.Millisecond,
		PowerOff:        20 * time.Millisecond,
		Emergency:       5 * time.Millisecond,
		Restore:         20 * time.Millisecond,
		UnlockAfterStop: 20 * time.Millisecond,
		GuestReady:      30 * time.Millisecond,
	}
}

// RunningAt is a VM that is running, descended from snapshot, the only
// one it has: the usual start of a test world.
func RunningAt(snapshot string) VMConfig {
	return VMConfig{State: "running", Snapshots: []string{snapshot}}
}
