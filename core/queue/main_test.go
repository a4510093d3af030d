package queue_test

import (
	"flag"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// The fault matrix's cells spend their time waiting on the fake
	// hypervisor's timings and deadlines, not on a core: unless -parallel
	// says otherwise, run more of them at once than there are cores.
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "16")
	}
	os.Exit(m.Run())
}
