package plugintest

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// Latencies runs do clients*each times, clients at once, each client
// calling it each times in a row with i numbering the calls, and returns
// how long every call took, sorted: what a benchmark of an operation
// under concurrent load reports as percentiles. A call's error fails tb.
func Latencies(tb testing.TB, clients, each int, do func(i int) error) []time.Duration {
	tb.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	lat := make([]time.Duration, 0, clients*each)
	errs := make([]error, clients)
	for c := range clients {
		wg.Go(func() {
			for k := range each {
				begun := time.Now()
				err := do(c*each + k)
				d := time.Since(begun)
				if err != nil {
					errs[c] = err
					return
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			tb.Fatalf("a call under load: %v", err)
		}
	}
	slices.Sort(lat)
	return lat
}

// PercentileMS is the p-th fraction (0.5, 0.99) of sorted latencies, in
// milliseconds, for b.ReportMetric.
func PercentileMS(sorted []time.Duration, p float64) float64 {
	return float64(sorted[int(p*float64(len(sorted)-1))]) / float64(time.Millisecond)
}
