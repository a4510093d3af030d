package vboxmanage

import "time"

// SetStartingGrace changes how long d's cleanup waits for a starting VM,
// so that a test of a stuck start need not wait the full ten seconds.
func SetStartingGrace(d *Driver, grace time.Duration) { d.cfg.startingGrace = grace }
