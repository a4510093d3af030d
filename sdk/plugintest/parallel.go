package plugintest

import (
	"flag"
	"strconv"
)

// WaitingParallel lets up to n parallel tests run at once unless the
// command line's -parallel says otherwise. go test's default is one per
// core, right for tests that compute; a package whose tests mostly wait
// (on a simulated hypervisor's timings, on deadlines) runs them n at a
// time instead. Call it in TestMain after flag.Parse.
func WaitingParallel(n int) {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", strconv.Itoa(max(n, 1)))
	}
}
