package api_test

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkSubmitLatency submits samples from 50 concurrent clients to the
// embedded (SQLite) queue and reports the latency from request to "queued"
// (the 202 answer) at p50 and p99, beside the same percentiles of a bare
// health check under the same load, measured in the same run.
func BenchmarkSubmitLatency(b *testing.B) {
	const clients, each = 50, 4
	s := newServiceTB(b)
	measure := func(do func(i int) error) []time.Duration {
		var mu sync.Mutex
		var lat []time.Duration
		var wg sync.WaitGroup
		for c := range clients {
			wg.Go(func() {
				for k := range each {
					begun := time.Now()
					err := do(c*each + k)
					d := time.Since(begun)
					require.NoError(b, err)
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		slices.Sort(lat)
		return lat
	}
	pct := func(lat []time.Duration, p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond)
	}
	var sub, health []time.Duration
	for b.Loop() {
		health = measure(func(int) error {
			resp, err := http.Get(s.url + "/healthz")
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			return err
		})
		sub = measure(func(i int) error {
			body, ct := form(b, fmt.Sprintf("s%d.bin", i), fmt.Appendf(nil, "sample %d %d", i, time.Now().UnixNano()), "profile", "clamav")
			req, _ := http.NewRequest("POST", s.url+"/v1/tasks", body)
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Type", ct)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		})
	}
	b.ReportMetric(pct(sub, .5), "submit-p50-ms")
	b.ReportMetric(pct(sub, .99), "submit-p99-ms")
	b.ReportMetric(pct(health, .5), "health-p50-ms")
	b.ReportMetric(pct(health, .99), "health-p99-ms")
}
